//! Where refreshed OAuth credentials outlive the process when the store cannot take them: a
//! state file (`--state PATH`) for read-only vaults such as a Kubernetes Secret mount. With a
//! writable vault, `sidekey serve` commits refreshed tokens through the store's writer
//! ([`crate::oauth::TokenManager::use_store`]) and opens this store without a vault path; the
//! vault patch below is only what [`CredStore::open`] with a vault path still does (in-process
//! tests of the token manager).
//!
//! Both stores are written with [`crate::atomic_file::write`] (mode 0600), so a crash leaves the
//! old file or the new one. The vault is patched as a read-modify-write of its *current* text:
//! only the one connection's credential fields change, so an edit the operator made to anything
//! else meanwhile survives; and when that connection's credential itself no longer matches a
//! version sidekey knows (a hand edit), the vault wins and nothing is written.
//!
//! The state file holds, per connection, the refreshed credential, `updated_at`, and the
//! fingerprint (see [`crate::config::snapshot::fingerprint`]) of the vault credential it
//! replaced. An entry applies only while the vault still holds that credential: once the vault's
//! credential changes, the vault is newer by definition and the entry is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

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

/// Why the vault was not patched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The connection's credential in the file is not one sidekey knows: a hand edit wins.
    #[error("the connection's credential was changed in the vault meanwhile")]
    Conflict,
    /// The connection is no longer in the vault.
    #[error("the connection is no longer in the vault")]
    Gone,
    /// The file is not a vault sidekey can patch (e.g. a half-finished hand edit).
    #[error("{0}")]
    Invalid(String),
}

/// Where a refreshed credential ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// Patched into the vault; the fingerprint of the credential now in it.
    Vault([u8; 32]),
    State,
    /// Not written: the vault's credential changed by hand (the vault wins) or the connection is
    /// gone.
    Skipped(String),
    /// Nowhere to write (or every write failed): kept in memory only.
    Memory,
}

/// Identifies a connection: (provider_config_key, connection_id).
pub type Key = (String, String);

/// The persistent side of token refresh. Writes are serialized by one lock, so two connections
/// refreshed at once never patch the vault from the same stale text.
#[derive(Debug, Default)]
pub struct CredStore {
    /// `None` when the vault must not be written (`--vault-read-only`) or in-process tests.
    vault: Option<PathBuf>,
    state: Option<PathBuf>,
    entries: Mutex<HashMap<Key, StateEntry>>,
    write_lock: Mutex<()>,
    /// The vault store's lock, held while the vault is patched, so a token write and an API
    /// write never read-modify-write the file at the same time.
    vault_lock: Option<std::sync::Arc<crate::config::reload::Reloader>>,
}

impl CredStore {
    /// A store that keeps nothing across restarts.
    pub fn memory() -> Self {
        Self::default()
    }

    /// Opens the store, reading the state file if it exists. An unreadable or malformed state
    /// file is an error: starting without it could resurrect a rotated-away refresh token.
    pub fn open(vault: Option<PathBuf>, state: Option<PathBuf>) -> Result<Self, String> {
        let mut entries = HashMap::new();
        if let Some(p) = &state {
            // The same limits as the other configuration files: a regular file, size-capped.
            match crate::config::limits::read_file_if_exists(p) {
                Ok(Some(f)) => {
                    for e in parse_state(&f.text).map_err(|e| format!("{}: {e}", p.display()))? {
                        entries.insert((e.provider_config_key.clone(), e.connection_id.clone()), e);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        Ok(Self {
            vault,
            state,
            entries: Mutex::new(entries),
            write_lock: Mutex::new(()),
            vault_lock: None,
        })
    }

    /// Serialises vault patches with the vault store's writes and reloads.
    pub fn with_vault_lock(
        mut self,
        reloader: std::sync::Arc<crate::config::reload::Reloader>,
    ) -> Self {
        self.vault_lock = Some(reloader);
        self
    }

    pub fn vault_writable(&self) -> bool {
        self.vault.is_some()
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

    /// Stores a refreshed credential: into the vault if writable, else the state file.
    /// `known` are the fingerprints of vault credentials sidekey itself read or wrote for this
    /// connection; `vault_fp` is the one the vault is believed to hold now. Blocking I/O.
    pub fn persist(
        &self,
        key: &Key,
        cred: &StoredCredential,
        known: &[[u8; 32]],
        vault_fp: &[u8; 32],
    ) -> Persisted {
        let _w = self.write_lock.lock();
        if let Some(vault) = &self.vault {
            let guard = self.vault_lock.as_ref().map(|r| r.lock_last_seen());
            let enc = self
                .vault_lock
                .as_ref()
                .and_then(|r| r.encryption_key().cloned());
            let patched = patch_vault_file(vault, key, cred, known, enc.as_deref());
            drop(guard);
            match patched {
                Ok(fp) => {
                    self.forget_locked(key);
                    return Persisted::Vault(fp);
                }
                Err(VaultWriteError::Patch(e @ (PatchError::Conflict | PatchError::Gone))) => {
                    return Persisted::Skipped(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(target: "sidekey::oauth", provider_config_key = %key.0,
                        connection_id = %key.1, error = %e,
                        "cannot write the refreshed credential to the vault; trying the state file");
                }
            }
        }
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

    /// Drops a connection's state entry (the vault holds its newest credential).
    fn forget_locked(&self, key: &Key) {
        let all = match self.entries.lock() {
            Ok(mut entries) => {
                if entries.remove(key).is_none() {
                    return;
                }
                entries.values().cloned().collect()
            }
            Err(_) => return,
        };
        if let Err(e) = self.write_state(all) {
            tracing::warn!(target: "sidekey::oauth", error = %e, "cannot rewrite the state file");
        }
    }

    fn write_state(&self, mut entries: Vec<StateEntry>) -> Result<(), String> {
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
        .map_err(|e| e.to_string())?;
        let text = format!("{STATE_HEADER}{body}");
        crate::atomic_file::write(path, text.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn parse_state(text: &str) -> Result<Vec<StateEntry>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    crate::config::limits::check_yaml(text).map_err(|r| r.to_string())?;
    // Messages from serde may quote a value; the state file holds tokens, so say only where.
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, StateFile>(de)
        .map(|f| f.connections)
        .map_err(|e| format!("not a sidekey state file (at `{}`)", e.path()))
}

fn now_rfc3339() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
enum VaultWriteError {
    #[error("{0}")]
    Patch(PatchError),
    #[error("{0}")]
    Io(std::io::Error),
}

fn patch_vault_file(
    path: &Path,
    key: &Key,
    cred: &StoredCredential,
    known: &[[u8; 32]],
    enc: Option<&crate::config::sealed::EncryptionKey>,
) -> Result<[u8; 32], VaultWriteError> {
    // Write through a symlink to its target rather than replacing the link with a file.
    let target = std::fs::canonicalize(path).map_err(VaultWriteError::Io)?;
    let text = crate::config::limits::read_file(&target)
        .map_err(|e| VaultWriteError::Patch(PatchError::Invalid(e)))?
        .text;
    let (patched, fp) = match enc {
        Some(enc) => patch_sealed_text(&text, key, cred, known, enc),
        None => patch_vault_text(&text, key, cred, known),
    }
    .map_err(VaultWriteError::Patch)?;
    crate::atomic_file::write(&target, patched.as_bytes(), 0o600).map_err(VaultWriteError::Io)?;
    Ok(fp)
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

/// [`patch_vault_text`] for a sealed vault: the records are opened with the key, the
/// credential is compared and patched as plaintext, and everything is sealed again before it
/// is written, so a refreshed token never reaches the disk in the clear.
pub fn patch_sealed_text(
    text: &str,
    key: &Key,
    cred: &StoredCredential,
    known: &[[u8; 32]],
    enc: &crate::config::sealed::EncryptionKey,
) -> Result<(String, [u8; 32]), PatchError> {
    let invalid = |m: &str| PatchError::Invalid(format!("the vault cannot be patched: {m}"));
    let mut raw =
        crate::config::vault::parse("vault", text).map_err(|_| invalid("it does not parse"))?;
    crate::config::sealed::open_vault(&mut raw, Some(enc))
        .map_err(|_| invalid("it does not open"))?;
    let conn = raw
        .connections
        .iter_mut()
        .find(|c| c.provider_config_key == key.0 && c.connection_id == key.1)
        .ok_or(PatchError::Gone)?;
    if !known.contains(&crate::config::snapshot::fingerprint(&conn.credentials)) {
        return Err(PatchError::Conflict);
    }
    if !apply_refreshed(&mut conn.credentials, cred) {
        return Err(PatchError::Conflict);
    }
    let fp = crate::config::snapshot::fingerprint(&conn.credentials);
    crate::config::sealed::seal_vault(&mut raw, enc).map_err(|_| invalid("cannot seal"))?;
    let body = serde_yaml_ng::to_string(&raw).map_err(|_| invalid("cannot serialize"))?;
    let header = crate::config::vault::leading_comments(text);
    Ok((format!("{header}{body}"), fp))
}

/// Patches one connection's credential fields in the vault text; returns the new text and the
/// fingerprint of the patched credential. Leading comment lines are kept (a YAML value does not
/// carry comments, so comments further down are lost on the first rewrite).
pub fn patch_vault_text(
    text: &str,
    key: &Key,
    cred: &StoredCredential,
    known: &[[u8; 32]],
) -> Result<(String, [u8; 32]), PatchError> {
    let invalid = |m: &str| PatchError::Invalid(format!("the vault cannot be patched: {m}"));
    crate::config::limits::check_yaml(text).map_err(|r| invalid(&r.to_string()))?;
    let mut root: Value =
        serde_yaml_ng::from_str(text).map_err(|_| invalid("it is not valid YAML"))?;
    let conns = root
        .get_mut("connections")
        .and_then(Value::as_sequence_mut)
        .ok_or(PatchError::Gone)?;
    let conn = conns
        .iter_mut()
        .find(|c| {
            c.get("provider_config_key").and_then(Value::as_str) == Some(key.0.as_str())
                && c.get("connection_id").and_then(Value::as_str) == Some(key.1.as_str())
        })
        .ok_or(PatchError::Gone)?;
    let creds = conn
        .get_mut("credentials")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| invalid("the connection has no credentials map"))?;
    let current: RawCredentials = serde_yaml_ng::from_value(Value::Mapping(creds.clone()))
        .map_err(|_| invalid("the connection's credentials do not parse"))?;
    if !known.contains(&crate::config::snapshot::fingerprint(&current)) {
        return Err(PatchError::Conflict);
    }
    let set = |m: &mut Mapping, k: &str, v: Option<&str>| match v {
        Some(v) => {
            m.insert(Value::from(k), Value::from(v));
        }
        None => {
            m.remove(k);
        }
    };
    match (cred, &current) {
        (
            StoredCredential::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            },
            RawCredentials::OAuth2 { .. },
        ) => {
            set(creds, "access_token", Some(access_token.expose()));
            if let Some(r) = refresh_token {
                set(creds, "refresh_token", Some(r.expose()));
            }
            set(creds, "expires_at", expires_at.as_deref());
        }
        (StoredCredential::OAuth2Cc { token, expires_at }, RawCredentials::OAuth2Cc { .. }) => {
            set(creds, "token", Some(token.expose()));
            set(creds, "expires_at", expires_at.as_deref());
        }
        _ => return Err(PatchError::Conflict),
    }
    let patched: RawCredentials = serde_yaml_ng::from_value(Value::Mapping(creds.clone()))
        .map_err(|_| invalid("the patched credentials do not parse"))?;
    let fp = crate::config::snapshot::fingerprint(&patched);
    let body = serde_yaml_ng::to_string(&root).map_err(|_| invalid("cannot serialize"))?;
    let header = crate::config::vault::leading_comments(text);
    Ok((format!("{header}{body}"), fp))
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
    fn a_sealed_vault_is_patched_sealed() {
        use crate::config::sealed::{seal_vault, EncryptionKey};
        let enc = EncryptionKey::parse(&"A".repeat(43)).expect("32-byte key");
        let mut raw = crate::config::vault::parse("v", VAULT).expect("parses");
        seal_vault(&mut raw, &enc).expect("seals");
        let sealed = format!(
            "# help text\n{}",
            serde_yaml_ng::to_string(&raw).expect("yaml")
        );
        assert!(!sealed.contains("old"), "{sealed}");
        let mut opened = raw.clone();
        crate::config::sealed::open_vault(&mut opened, Some(&enc)).expect("opens");
        let known = [fingerprint(&opened.connections[0].credentials)];
        let cred = StoredCredential::OAuth2 {
            access_token: Secret::new("fresh-access"),
            refresh_token: Some(Secret::new("fresh-refresh")),
            expires_at: Some("2031-01-01T00:00:00Z".into()),
        };
        let key = ("i".to_string(), "c".to_string());
        let (text, fp) = patch_sealed_text(&sealed, &key, &cred, &known, &enc).expect("patched");
        assert!(text.starts_with("# help text\n"), "{text}");
        assert!(
            !text.contains("fresh-access") && !text.contains("fresh-refresh"),
            "{text}"
        );
        let mut back = crate::config::vault::parse("v", &text).expect("parses");
        crate::config::sealed::open_vault(&mut back, Some(&enc)).expect("opens");
        assert_eq!(fp, fingerprint(&back.connections[0].credentials));
        let RawCredentials::OAuth2 { access_token, .. } = &back.connections[0].credentials else {
            panic!("oauth2")
        };
        assert_eq!(access_token.expose(), "fresh-access");
        // A credential the operator changed meanwhile is not overwritten.
        let err = patch_sealed_text(&sealed, &key, &cred, &[[0; 32]], &enc).expect_err("conflict");
        assert!(matches!(err, PatchError::Conflict));
    }

    #[test]
    fn patches_only_that_connection_and_keeps_the_header() {
        let known = [fp_of(VAULT, "c")];
        let (text, fp) = patch_vault_text(VAULT, &key("c"), &fresh(), &known).expect("patched");
        assert!(text.starts_with("# help text\n# more help\n"), "{text}");
        let v = crate::config::vault::parse("v", &text).expect("still a vault");
        match &v.connections[0].credentials {
            RawCredentials::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => {
                assert_eq!(access_token.expose(), "new");
                assert_eq!(refresh_token.as_ref().map(Secret::expose), Some("r2"));
                assert_eq!(expires_at.as_deref(), Some("2030-01-01T00:00:00Z"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fp, fingerprint(&v.connections[0].credentials));
        assert_eq!(
            fp,
            fp_of(&text, "c"),
            "the fingerprint a reload will compute"
        );
        assert_eq!(
            fp_of(&text, "d"),
            fp_of(VAULT, "d"),
            "other connection untouched"
        );
        assert!(text.contains("raw:"), "unrelated fields kept: {text}");
    }

    #[test]
    fn a_hand_edit_of_that_credential_wins() {
        let edited = VAULT.replace("access_token: old", "access_token: by-hand");
        let known = [fp_of(VAULT, "c")];
        assert_eq!(
            patch_vault_text(&edited, &key("c"), &fresh(), &known).map(|_| ()),
            Err(PatchError::Conflict)
        );
        // A hand edit elsewhere in the file does not block the patch and survives it.
        let elsewhere = VAULT.replace("access_token: other", "access_token: other2");
        let (text, _) = patch_vault_text(&elsewhere, &key("c"), &fresh(), &known).expect("patched");
        assert!(text.contains("other2"), "{text}");
        assert_eq!(
            patch_vault_text(VAULT, &key("gone"), &fresh(), &known).map(|_| ()),
            Err(PatchError::Gone)
        );
        assert!(matches!(
            patch_vault_text("connections: [", &key("c"), &fresh(), &known),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn expires_at_is_removed_when_the_new_token_has_none() {
        let known = [fp_of(VAULT, "c")];
        let cred = StoredCredential::OAuth2 {
            access_token: Secret::new("new"),
            refresh_token: None,
            expires_at: None,
        };
        let (text, _) = patch_vault_text(VAULT, &key("c"), &cred, &known).expect("patched");
        assert!(!text.contains("2020-01-01"), "{text}");
        assert!(text.contains("r1"), "the old refresh token stays: {text}");
    }

    #[test]
    fn writes_the_vault_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().expect("dir");
        let vault = dir.path().join("vault.yaml");
        std::fs::write(&vault, VAULT).expect("write");
        let store = CredStore::open(Some(vault.clone()), None).expect("open");
        let known = [fp_of(VAULT, "c")];
        let out = store.persist(&key("c"), &fresh(), &known, &known[0]);
        let text = std::fs::read_to_string(&vault).expect("read");
        assert_eq!(out, Persisted::Vault(fp_of(&text, "c")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&vault)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second persist with the old fingerprint only is a conflict now.
        let again = store.persist(&key("c"), &fresh(), &known, &known[0]);
        assert!(matches!(again, Persisted::Skipped(_)), "{again:?}");
    }

    #[test]
    fn falls_back_to_the_state_file_and_applies_it_only_while_the_vault_matches() {
        let dir = tempfile::tempdir().expect("dir");
        // A vault path that cannot be read or written, whoever runs the test.
        let vault = dir.path().join("missing-dir").join("vault.yaml");
        let state = dir.path().join("state.yaml");
        let store = CredStore::open(Some(vault), Some(state.clone())).expect("open");
        let fp = fp_of(VAULT, "c");
        assert_eq!(
            store.persist(&key("c"), &fresh(), &[fp], &fp),
            Persisted::State
        );
        assert_eq!(store.lookup(&key("c"), &fp), Some(fresh()));
        assert_eq!(store.lookup(&key("c"), &[0; 32]), None);
        let text = std::fs::read_to_string(&state).expect("state");
        assert!(!text.is_empty());

        // Reopened (a restart): the entry is still there.
        let store = CredStore::open(None, Some(state.clone())).expect("reopen");
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
        let store = CredStore::open(None, Some(state)).expect("reopen");
        assert_eq!(store.lookup(&key("c"), &fp), None);
    }

    #[test]
    fn memory_store_and_bad_state_files() {
        let store = CredStore::memory();
        let fp = fp_of(VAULT, "c");
        assert_eq!(
            store.persist(&key("c"), &fresh(), &[fp], &fp),
            Persisted::Memory
        );
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("state.yaml");
        std::fs::write(
            &state,
            "connections: [{provider_config_key: i, connection_id: c, token: sk_hidden}]",
        )
        .expect("write");
        let err = CredStore::open(None, Some(state)).expect_err("refused");
        assert!(!err.contains("sk_hidden"), "{err}");
    }
}
