//! Connection auth errors: which connections the upstream or the token endpoint refused,
//! shown as Nango's `errors: [{type: "auth", log_id}]`, counted per integration
//! (`sidekey_connection_auth_errors`) and announced by a `refresh` / `success: false` webhook.
//!
//! **Marked** by an upstream answer in the provider's `proxy.auth_error_code` (default 401)
//! to an API_KEY or BASIC connection (once, when the error appears), and by every failed
//! OAuth refresh (at most once per `--refresh-cooldown`, since requests fail fast in between).
//! **Cleared** by the next 2xx through the connection, a successful refresh, a new
//! credential (an API write, a re-auth, a hand edit: the credential's fingerprint changed),
//! or [`AuthErrors::clear_connection`] (a re-auth that wrote the same credential).
//!
//! **Where it lives**: in memory only. An error is an observation of the upstream, and the
//! next request makes it again: after a restart a broken connection is marked by its first
//! refused request, and its webhook was sent (and committed) the first time. Persisting it
//! would need a write on the request path for an answer that may change on the next call.
//!
//! **Cost on the request path**: a 2xx reads one relaxed atomic flag on the connection
//! ([`Connection::auth_error_hint`]); only when it is set does the request take this table's
//! lock. Other statuses compare the status with the provider's list only for 4xx. The flag
//! lives on the compiled connection, which a write replaces: [`AuthErrors::reconcile`], called
//! on every publish, sets it again on the new connection (or drops the error when the
//! credential changed or the connection is gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_json::{json, Value};

use super::{AuthEvent, EventError, Hooks, Operation};
use crate::config::{Connection, Credential, Snapshot};
use crate::metrics::Metrics;

/// What caused an error.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// The upstream answered this status to the connection's credential.
    Status(u16),
    /// A token refresh failed; the provider's error code when it gave one.
    Refresh { provider_error: Option<&'a str> },
}

struct Entry {
    log_id: String,
    /// The credential that was refused: a different one clears the error.
    fingerprint: [u8; 32],
}

type Key = (String, String);

/// Returns the snapshot serving now (set by the app; absent in unit tests).
type Current = Box<dyn Fn() -> Option<Arc<Snapshot>> + Send + Sync>;

/// The auth-error table (see the module docs).
pub struct AuthErrors {
    table: Mutex<HashMap<Key, Entry>>,
    hooks: Arc<Hooks>,
    metrics: Arc<Metrics>,
    current: OnceLock<Current>,
}

impl std::fmt::Debug for AuthErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthErrors").finish_non_exhaustive()
    }
}

fn key_of(conn: &Connection) -> Key {
    (
        conn.provider_config_key.to_string(),
        conn.connection_id.to_string(),
    )
}

/// An id for the log event that recorded the error (`log_id`; Nango's point at its logs):
/// 20 letters and digits, grep-able in sidekey's log.
fn new_log_id() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl AuthErrors {
    pub fn new(hooks: Arc<Hooks>, metrics: Arc<Metrics>) -> Self {
        Self {
            table: Mutex::default(),
            hooks,
            metrics,
            current: OnceLock::new(),
        }
    }

    /// How the table finds the serving snapshot (set once by the app builder), so that a mark
    /// or a clear made through a connection of an older snapshot reaches the serving one too.
    pub fn set_current(&self, f: Current) {
        let _ = self.current.set(f);
    }

    fn current_conn(&self, conn: &Connection) -> Option<Arc<Connection>> {
        let snap = (self.current.get()?)()?;
        snap.connection(&conn.provider_config_key, &conn.connection_id)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request path's one call, with the final upstream status of a request.
    #[inline]
    pub fn observe(&self, conn: &Connection, status: u16) {
        if (200..300).contains(&status) {
            if conn.auth_error_hint() {
                self.clear(conn, "success");
            }
        } else if (400..500).contains(&status)
            // Already marked: a stream of 401s costs a flag read each, not a hash and a lock.
            && !conn.auth_error_hint()
            && matches!(
                conn.credential,
                Credential::ApiKey(_) | Credential::Basic { .. }
            )
            && conn.integration.provider.is_auth_error(status)
        {
            self.mark(conn, Cause::Status(status));
        }
    }

    /// Records an auth error for `conn` and announces it (see the module docs for when).
    pub fn mark(&self, conn: &Connection, cause: Cause<'_>) {
        let fingerprint = conn.fingerprint();
        let current = self.current_conn(conn);
        if let Some(cur) = &current {
            if cur.fingerprint() != fingerprint {
                // The request used a credential that has been replaced since: not this one's.
                return;
            }
        }
        let key = key_of(conn);
        let (log_id, new) = {
            let mut t = self.lock();
            let new = !t.contains_key(&key);
            if new || matches!(cause, Cause::Refresh { .. }) {
                t.insert(
                    key.clone(),
                    Entry {
                        log_id: new_log_id(),
                        fingerprint,
                    },
                );
            }
            conn.set_auth_error_hint(true);
            if let Some(cur) = &current {
                cur.set_auth_error_hint(true);
            }
            let log_id = t.get(&key).map(|e| e.log_id.clone()).unwrap_or_default();
            self.count(&t, &key.0);
            (log_id, new)
        };
        let (status, error) = match cause {
            Cause::Status(s) => (
                Some(s),
                EventError {
                    kind: "connection_test_failed".into(),
                    description: format!(
                        "The API refused this connection's credentials (HTTP {s}); reconnect it."
                    ),
                },
            ),
            Cause::Refresh { provider_error } => (
                None,
                EventError {
                    kind: "refresh_token_external_error".into(),
                    description: match provider_error {
                        Some(code) => format!("The external API returned an error when trying to refresh the access token ({code}). Please try again later."),
                        None => "The external API returned an error when trying to refresh the access token. Please try again later.".into(),
                    },
                },
            ),
        };
        if new || status.is_none() {
            tracing::warn!(target: "sidekey::auth", log_id = %log_id, provider_config_key = %key.0,
                connection_id = %key.1, status, error = %error.kind, "connection marked with an auth error");
            let mut ev = AuthEvent::about(conn, Operation::Refresh, false);
            ev.error = Some(error);
            self.hooks.emit(ev);
        }
    }

    /// Clears `conn`'s error, if it has one (a 2xx, a successful refresh).
    pub fn clear(&self, conn: &Connection, why: &'static str) {
        let key = key_of(conn);
        let current = self.current_conn(conn);
        let removed = {
            let mut t = self.lock();
            let removed = t.remove(&key).is_some();
            conn.set_auth_error_hint(false);
            if let Some(cur) = &current {
                cur.set_auth_error_hint(false);
            }
            if removed {
                self.count(&t, &key.0);
            }
            removed
        };
        if removed {
            tracing::info!(target: "sidekey::auth", provider_config_key = %key.0,
                connection_id = %key.1, why, "connection auth error cleared");
        }
    }

    /// Clears the error of a connection named by its keys: a re-auth through the Connect flow
    /// (the lead's merge calls it beside [`Hooks::emit`] for a successful creation or override).
    pub fn clear_connection(&self, provider_config_key: &str, connection_id: &str) {
        let snap = self.current.get().and_then(|f| f());
        match snap
            .as_ref()
            .and_then(|s| s.connection(provider_config_key, connection_id))
        {
            Some(c) => self.clear(c, "reauthorized"),
            None => {
                let mut t = self.lock();
                let key = (provider_config_key.to_string(), connection_id.to_string());
                if t.remove(&key).is_some() {
                    self.count(&t, provider_config_key);
                }
            }
        }
    }

    /// After a new snapshot was published: errors of connections that are gone or whose
    /// credential changed are dropped; the others set the flag on the new compiled
    /// connection. Costs nothing when no connection has an error.
    pub fn reconcile(&self, snap: &Snapshot) {
        self.reconcile_held(snap, false)
    }

    /// [`AuthErrors::reconcile`] over a snapshot that holds only some connections (a bounded
    /// cache) when `partial`: a connection it does not hold keeps its error (it was evicted,
    /// not deleted; deletes go through [`AuthErrors::forget`]).
    pub fn reconcile_held(&self, snap: &Snapshot, partial: bool) {
        let mut t = self.lock();
        if t.is_empty() {
            return;
        }
        let mut touched: Vec<String> = Vec::new();
        t.retain(|(k, id), e| {
            let held = snap.connection(k, id);
            if partial && held.is_none() {
                return true;
            }
            let keep = held.filter(|c| c.fingerprint() == e.fingerprint);
            match keep {
                Some(c) => {
                    c.set_auth_error_hint(true);
                    true
                }
                None => {
                    tracing::info!(target: "sidekey::auth", provider_config_key = %k,
                        connection_id = %id, why = "credential changed or connection removed", "connection auth error cleared");
                    touched.push(k.clone());
                    false
                }
            }
        });
        touched.dedup();
        for k in touched {
            self.count(&t, &k);
        }
    }

    /// Drops the errors of a deleted connection (`Some(id)`) or of every connection of a
    /// deleted integration (`None`).
    pub fn forget(&self, integration: &str, id: Option<&str>) {
        let mut t = self.lock();
        let before = t.len();
        t.retain(|(k, i), _| !(k == integration && id.is_none_or(|id| id == i)));
        if t.len() != before {
            self.count(&t, integration);
        }
    }

    /// Recounts one integration's errors into the gauge (the table is small: only errors).
    fn count(&self, t: &HashMap<Key, Entry>, integration: &str) {
        let n = t.keys().filter(|(k, _)| k == integration).count();
        self.metrics.set_auth_errors(integration, n);
    }

    /// The errors of every connection that has one, for one API read: `(key, id) → log_id`.
    pub fn view(&self) -> ErrorView {
        let t = self.lock();
        ErrorView(
            t.iter()
                .map(|(k, e)| (k.clone(), e.log_id.clone()))
                .collect(),
        )
    }
}

/// The errors as one API answer sees them (copied out, so the answer holds no lock).
#[derive(Debug, Default)]
pub struct ErrorView(HashMap<Key, String>);

impl ErrorView {
    /// Whether the connection has an error.
    pub fn has(&self, c: &Connection) -> bool {
        !self.0.is_empty() && self.0.contains_key(&key_of(c))
    }

    /// Nango's `errors` array for a connection.
    pub fn json(&self, c: &Connection) -> Value {
        if self.0.is_empty() {
            return json!([]);
        }
        match self.0.get(&key_of(c)) {
            Some(log_id) => json!([{ "type": "auth", "log_id": log_id }]),
            None => json!([]),
        }
    }
}

/// The token manager reports refresh outcomes here (`oauth` names only its trait).
impl crate::oauth::RefreshObserver for AuthErrors {
    fn refresh_failed(&self, conn: &Connection, provider_error: Option<&str>) {
        self.mark(conn, Cause::Refresh { provider_error });
    }
    fn refreshed(&self, conn: &Connection) {
        // Not on the hot path (one call per refresh), and the request's connection may be of
        // an older snapshot than the one whose flag is set: always look.
        self.clear(conn, "refreshed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, BuildOptions, Sources};

    const PROVIDERS: &str = r#"
k: {auth_mode: API_KEY, proxy: {base_url: "https://api.example", headers: {x-api-key: "${apiKey}"}}}
o: {auth_mode: OAUTH2, token_url: "https://t.example/token", proxy: {base_url: "https://api.example"}}
"#;

    fn snap(c1_key: &str, with_c2: bool) -> Snapshot {
        let mut vault = format!(
            "integrations:\n  - {{unique_key: ik, provider: k}}\n  - {{unique_key: io, provider: o}}\nconnections:\n  - {{connection_id: c1, provider_config_key: ik, credentials: {{type: API_KEY, apiKey: {c1_key}}}}}\n  - {{connection_id: o1, provider_config_key: io, credentials: {{type: OAUTH2, access_token: at}}}}\n"
        );
        if with_c2 {
            vault.push_str("  - {connection_id: c2, provider_config_key: ik, credentials: {type: API_KEY, apiKey: k2}}\n");
        }
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault,
        };
        config::snapshot::build(&src, &BuildOptions::default()).expect("builds")
    }

    fn conn(s: &Snapshot, k: &str, id: &str) -> Arc<Connection> {
        s.connection(k, id).expect("connection").clone()
    }

    #[test]
    fn marked_by_401_cleared_by_2xx_kept_across_recompiles_dropped_with_the_credential() {
        let metrics = Arc::new(Metrics::new());
        let errors = AuthErrors::new(Arc::new(Hooks::disabled()), metrics.clone());
        let s1 = snap("key-a", true);
        let c1 = conn(&s1, "ik", "c1");
        errors.observe(&c1, 200);
        errors.observe(&c1, 403);
        assert!(
            !c1.auth_error_hint() && !errors.view().has(&c1),
            "403 is not k's"
        );
        errors.observe(&c1, 401);
        assert!(c1.auth_error_hint() && errors.view().has(&c1));
        assert_eq!(errors.view().json(&c1)[0]["type"], "auth");
        assert!(!errors.view().has(&conn(&s1, "ik", "c2")));
        assert!(metrics
            .encode()
            .contains(r#"sidekey_connection_auth_errors{integration="ik"} 1"#));
        // An OAuth connection's 401 is the token manager's business, not a mark.
        let o1 = conn(&s1, "io", "o1");
        errors.observe(&o1, 401);
        assert!(!errors.view().has(&o1));

        // Rebuilt with the same credential: the new compiled connection carries the flag, so
        // its 2xx clears the error.
        let s2 = snap("key-a", true);
        let c1b = conn(&s2, "ik", "c1");
        assert!(!c1b.auth_error_hint());
        errors.reconcile(&s2);
        assert!(c1b.auth_error_hint() && errors.view().has(&c1b));
        errors.observe(&c1b, 204);
        assert!(!c1b.auth_error_hint() && !errors.view().has(&c1b));
        assert!(metrics
            .encode()
            .contains(r#"sidekey_connection_auth_errors{integration="ik"} 0"#));

        // A new credential clears it; so does removing the connection.
        errors.observe(&c1b, 401);
        errors.observe(&conn(&s2, "ik", "c2"), 401);
        let s3 = snap("key-b", false);
        errors.reconcile(&s3);
        assert!(!conn(&s3, "ik", "c1").auth_error_hint());
        assert_eq!(errors.view().0.len(), 0);
    }

    #[test]
    fn a_401_to_a_replaced_credential_marks_nothing() {
        let errors = AuthErrors::new(Arc::new(Hooks::disabled()), Arc::new(Metrics::new()));
        let old = snap("key-a", false);
        let new = Arc::new(snap("key-b", false));
        let serving = new.clone();
        errors.set_current(Box::new(move || Some(serving.clone())));
        // A request that started on the old snapshot gets its 401 after the re-auth.
        errors.observe(&conn(&old, "ik", "c1"), 401);
        assert!(!errors.view().has(&conn(&new, "ik", "c1")));
        // On the serving snapshot's credential it marks, and sets the serving flag.
        errors.observe(&conn(&new, "ik", "c1"), 401);
        assert!(conn(&new, "ik", "c1").auth_error_hint());
    }
}
