//! Connect sessions: short-lived tokens an application's backend makes for one end user, so
//! that the end user's browser may create (or re-authorize) a connection and nothing else.
//!
//! A token is `nango_connect_session_` followed by 64 lowercase hex characters (32 random
//! bytes), as Nango makes them. Only its SHA-256 is kept: the token is shown once, in the
//! reply that creates it, and is never stored, logged or compared in plain text. 32 random
//! bytes need no slow hash (nothing to guess a password from), so SHA-256 is enough, and a
//! lookup is one hash and one map probe.
//!
//! [`SessionStore`] is the seam: [`MemorySessions`] keeps sessions in this process's memory,
//! which is what the vault-file mode uses (a restart forgets open sessions: the backend asks
//! for a new one, as it would after 30 minutes anyway). With `--store postgres://…` the fleet
//! shares them through `store::postgres::sessions::PgSessions`, the same trait over the
//! store's tables; the methods return futures for that reason.
//! An expired session is gone for every method at once, whether or not it was pruned yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What every session token starts with.
pub const TOKEN_PREFIX: &str = "nango_connect_session_";

/// One connect session, as its creator asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// When it stops working.
    pub expires_at: jiff::Timestamp,
    /// The end user in the API's shape (`{id, email, display_name, organization, tags}`), or
    /// `None` when the session was made from tags alone.
    pub end_user: Option<Value>,
    /// The connection's tags: those made from the end user, then the body's `tags` on top.
    pub tags: Map<String, Value>,
    /// Integration keys the session may connect; `None` means any.
    pub allowed_integrations: Option<Vec<String>>,
    /// Per integration key: `connection_config`, `authorization_params`, `user_scopes`.
    pub integrations_config_defaults: Map<String, Value>,
    /// Per integration key: `docs_connect` (shown by a Connect UI).
    pub overrides: Map<String, Value>,
    /// Where auth webhooks of connections made with this session go instead of the default.
    pub webhook_url_override: Option<String>,
    /// A reconnect session re-authorizes this connection (`provider_config_key`,
    /// `connection_id`) instead of creating one.
    pub reconnect: Option<(String, String)>,
}

/// One OAuth authorization in flight: made by `GET /oauth/connect/{key}`, taken (once) by
/// `GET /oauth/callback` with its `state`. Kept under the SHA-256 of the state, like sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthState {
    /// The digest of the session that started it (it must still be live at the callback).
    pub session: [u8; 32],
    /// When the state stops working: ten minutes, or the session's end if sooner.
    pub expires_at: jiff::Timestamp,
    pub provider_config_key: String,
    /// The connection's config, as resolved when the flow started.
    pub connection_config: Map<String, Value>,
    /// The PKCE verifier (`None` when the provider disables PKCE).
    pub code_verifier: Option<String>,
    /// The `redirect_uri` sent to the provider (the token request repeats it).
    pub redirect_uri: String,
    /// The frontend SDK's WebSocket client waiting for the outcome, if any.
    pub ws_client_id: Option<String>,
}

/// Why a session could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The store could not be reached (a database backend); never the in-memory one.
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

/// A session found by its token, with the number of auth attempts made with it so far
/// (this one included, when it was counted).
#[derive(Debug, Clone)]
pub struct Found {
    pub session: Arc<Session>,
    pub attempts: u32,
}

/// Where sessions live. Every method takes the token's digest ([`digest`]), never the token.
pub trait SessionStore: Send + Sync {
    /// Keeps a new session.
    fn insert(&self, digest: [u8; 32], session: Session)
        -> BoxFuture<'_, Result<(), SessionError>>;
    /// The live session of this digest; with `count`, one more auth attempt is counted
    /// first. `None` when unknown, deleted or expired.
    fn get(
        &self,
        digest: [u8; 32],
        count: bool,
    ) -> BoxFuture<'_, Result<Option<Found>, SessionError>>;
    /// Deletes a session; whether a live one was there.
    fn delete(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<bool, SessionError>>;
    /// Keeps an OAuth state.
    fn put_state(
        &self,
        digest: [u8; 32],
        state: OAuthState,
    ) -> BoxFuture<'_, Result<(), SessionError>>;
    /// Takes an OAuth state out (single use); `None` when unknown, used or expired.
    fn take_state(
        &self,
        digest: [u8; 32],
    ) -> BoxFuture<'_, Result<Option<OAuthState>, SessionError>>;
    /// Hands a message for the frontend SDK's WebSocket `ws_client_id` to the other replicas
    /// (an OAuth callback may land on another replica than the one holding the socket).
    /// Nothing to do without a fleet: that is the default.
    fn relay_socket(&self, _ws_client_id: &str, _message: &str) {}
    /// What other replicas relayed, as (`ws_client_id`, message): for the one task that hands
    /// them to this process's sockets. `None` without a fleet, and after the first call.
    fn relayed_sockets(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>> {
        None
    }
}

/// A fresh token: the prefix and 32 random bytes in hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Whether `token` has the shape of a session token (Nango's
/// `^nango_connect_session_[a-f0-9]{64}$`).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The digest a token is stored under.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    session: Arc<Session>,
    attempts: u32,
}

/// Sessions in this process's memory (the vault-file mode).
#[derive(Default)]
pub struct MemorySessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    states: Mutex<HashMap<[u8; 32], OAuthState>>,
}

impl MemorySessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live sessions (for tests and the log).
    pub fn len(&self) -> usize {
        let now = jiff::Timestamp::now();
        self.lock()
            .values()
            .filter(|e| e.session.expires_at > now)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding the lock left the map as it was (every change is one call).
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionStore for MemorySessions {
    fn insert(
        &self,
        digest: [u8; 32],
        session: Session,
    ) -> BoxFuture<'_, Result<(), SessionError>> {
        let now = jiff::Timestamp::now();
        let mut map = self.lock();
        // Expired sessions go when new ones come, so the map holds at most the sessions of
        // the last TTL.
        map.retain(|_, e| e.session.expires_at > now);
        map.insert(
            digest,
            Entry {
                session: Arc::new(session),
                attempts: 0,
            },
        );
        Box::pin(async { Ok(()) })
    }

    fn get(
        &self,
        digest: [u8; 32],
        count: bool,
    ) -> BoxFuture<'_, Result<Option<Found>, SessionError>> {
        let now = jiff::Timestamp::now();
        let mut map = self.lock();
        let found = match map.get_mut(&digest) {
            Some(e) if e.session.expires_at > now => {
                if count {
                    e.attempts = e.attempts.saturating_add(1);
                }
                Some(Found {
                    session: e.session.clone(),
                    attempts: e.attempts,
                })
            }
            Some(_) => {
                map.remove(&digest);
                None
            }
            None => None,
        };
        Box::pin(async move { Ok(found) })
    }

    fn delete(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<bool, SessionError>> {
        let now = jiff::Timestamp::now();
        let live = self
            .lock()
            .remove(&digest)
            .is_some_and(|e| e.session.expires_at > now);
        Box::pin(async move { Ok(live) })
    }

    fn put_state(
        &self,
        digest: [u8; 32],
        state: OAuthState,
    ) -> BoxFuture<'_, Result<(), SessionError>> {
        let now = jiff::Timestamp::now();
        let mut map = self.states.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires_at > now);
        map.insert(digest, state);
        Box::pin(async { Ok(()) })
    }

    fn take_state(
        &self,
        digest: [u8; 32],
    ) -> BoxFuture<'_, Result<Option<OAuthState>, SessionError>> {
        let now = jiff::Timestamp::now();
        let taken = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest)
            .filter(|s| s.expires_at > now);
        Box::pin(async move { Ok(taken) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ttl_secs: i64) -> Session {
        Session {
            expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ttl_secs),
            end_user: None,
            tags: Map::new(),
            allowed_integrations: None,
            integrations_config_defaults: Map::new(),
            overrides: Map::new(),
            webhook_url_override: None,
            reconnect: None,
        }
    }

    #[test]
    fn tokens_have_nangos_shape() {
        let t = new_token();
        assert!(well_formed(&t), "{t}");
        assert_ne!(t, new_token());
        assert!(!well_formed("nango_connect_session_abc"));
        assert!(!well_formed(&t.to_uppercase()));
        assert!(!well_formed(&format!("{t}0")));
    }

    #[tokio::test]
    async fn sessions_count_attempts_and_expire() {
        let store = MemorySessions::new();
        let (a, b) = (digest("a"), digest("b"));
        store.insert(a, session(60)).await.expect("insert");
        store.insert(b, session(-1)).await.expect("insert");
        assert_eq!(store.len(), 1);
        let found = store.get(a, true).await.expect("get").expect("live");
        assert_eq!(found.attempts, 1);
        let found = store.get(a, false).await.expect("get").expect("live");
        assert_eq!(found.attempts, 1);
        assert!(store.get(b, false).await.expect("get").is_none(), "expired");
        assert!(store.delete(a).await.expect("delete"));
        assert!(store.get(a, false).await.expect("get").is_none(), "deleted");
        assert!(!store.delete(a).await.expect("delete"));
    }

    #[tokio::test]
    async fn oauth_states_are_single_use_and_expire() {
        let store = MemorySessions::new();
        let state = |secs: i64| OAuthState {
            session: digest("s"),
            expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs),
            provider_config_key: "k".into(),
            connection_config: Map::new(),
            code_verifier: None,
            redirect_uri: "http://127.0.0.1/oauth/callback".into(),
            ws_client_id: None,
        };
        store.put_state(digest("a"), state(60)).await.expect("put");
        store.put_state(digest("b"), state(-1)).await.expect("put");
        assert!(store.take_state(digest("a")).await.expect("take").is_some());
        assert!(
            store.take_state(digest("a")).await.expect("take").is_none(),
            "used"
        );
        assert!(
            store.take_state(digest("b")).await.expect("take").is_none(),
            "expired"
        );
    }
}
