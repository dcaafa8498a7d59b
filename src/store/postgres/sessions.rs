//! Connect sessions and OAuth states in PostgreSQL, shared by every replica of a fleet: a
//! session made through one replica is found by all of them (`GET`/`DELETE /connect/session`,
//! a credential submission, an OAuth start), and the provider's redirect may land on any.
//!
//! Only digests are stored: a session under the SHA-256 of its token (`token_sha256`), an
//! OAuth authorization under the SHA-256 of its `state`. Every read and change is one
//! statement, so the rules hold across replicas without a lock held between calls:
//! - counting an attempt is `UPDATE … SET attempts = attempts + 1 … RETURNING`, so attempts
//!   made at once on different replicas are all counted and each sees its own number;
//! - a state is taken with `DELETE … RETURNING`: of two callbacks with one state, exactly one
//!   gets it;
//! - expiry is judged by the database's clock (`expires_at > now()`), one clock for the fleet;
//!   expired rows are deleted when new ones are written.
//!
//! The frontend SDK's WebSocket is held by one replica; an OAuth outcome for a socket that is
//! not open on the replica serving the callback is relayed with `NOTIFY` on
//! [`SOCKETS_CHANNEL`], which every replica holding a socket `LISTEN`s to on a connection of
//! its own (started with its first socket, reconnected with backoff). The messages carry
//! ids and the outcome only, as the socket does.
//!
//! The PKCE verifier of a state is sealed with `SIDEKEY_ENCRYPTION_KEY` like the store's other
//! secrets (nothing else in these rows is a secret: ids, tags, end-user fields, URLs). A failed
//! statement is [`SessionError::Unavailable`], which the Connect routes answer with 503
//! `store_unavailable`; its text names the database's error, never the store URL or a token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{chain, get, tls::MakeRustls, PgStore, STORE_NAME};
use crate::config::sealed::EncryptionKey;
use crate::store::sessions::{Found, OAuthState, Session, SessionError, SessionStore};

/// The channel WebSocket messages are relayed on between replicas.
pub const SOCKETS_CHANNEL: &str = "sidekey_connect_sockets";

/// Sessions and OAuth states in the store's tables.
pub struct PgSessions {
    pool: Pool,
    key: Option<Arc<EncryptionKey>>,
    /// For the relay's own listening connection.
    config: tokio_postgres::Config,
    tls: MakeRustls,
    listening: AtomicBool,
}

impl std::fmt::Debug for PgSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessions").finish_non_exhaustive()
    }
}

/// A session as its row's `record` holds it. Every field has a default, so a row written by
/// an older or newer sidekey still reads.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct SessionRecord {
    /// RFC 3339 (the `expires_at` column decides liveness; this is what the API shows).
    expires_at: String,
    end_user: Option<Value>,
    tags: Map<String, Value>,
    allowed_integrations: Option<Vec<String>>,
    integrations_config_defaults: Map<String, Value>,
    overrides: Map<String, Value>,
    webhook_url_override: Option<String>,
    reconnect: Option<(String, String)>,
}

/// An OAuth state as its row's `record` holds it.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct StateRecord {
    expires_at: String,
    provider_config_key: String,
    connection_config: Map<String, Value>,
    /// Sealed when the store has an encryption key.
    code_verifier: Option<String>,
    redirect_uri: String,
    ws_client_id: Option<String>,
}

fn unavailable(e: &dyn std::error::Error) -> SessionError {
    SessionError::Unavailable(format!("{STORE_NAME}: {}", chain(e)))
}

/// What a verifier is sealed with: the table, the state's digest and the field, so a sealed
/// value copied to another row does not open.
fn verifier_aad(state: &str) -> String {
    format!("sidekey_oauth_states/{state}/code_verifier")
}

fn timestamp(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

impl PgSessions {
    /// Sessions over the store's pool, sealing PKCE verifiers with its encryption key.
    pub fn new(store: &PgStore) -> Self {
        Self {
            pool: store.pool.clone(),
            key: store.key.clone(),
            config: store.config.clone(),
            tls: store.tls.clone(),
            listening: AtomicBool::new(false),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SessionError> {
        get(&self.pool)
            .await
            .map_err(|e| SessionError::Unavailable(format!("{STORE_NAME} is unreachable: {}", e.0)))
    }

    fn session_from(record: Value) -> Option<Session> {
        let r: SessionRecord = serde_json::from_value(record)
            .map_err(|e| tracing::warn!(error = %e, "a connect session row does not read; treated as unknown"))
            .ok()?;
        Some(Session {
            expires_at: timestamp(&r.expires_at)?,
            end_user: r.end_user,
            tags: r.tags,
            allowed_integrations: r.allowed_integrations,
            integrations_config_defaults: r.integrations_config_defaults,
            overrides: r.overrides,
            webhook_url_override: r.webhook_url_override,
            reconnect: r.reconnect,
        })
    }

    fn state_from(&self, digest: &str, session: &str, record: Value) -> Option<OAuthState> {
        let r: StateRecord = serde_json::from_value(record)
            .map_err(|e| tracing::warn!(error = %e, "an OAuth state row does not read; treated as unknown"))
            .ok()?;
        let code_verifier = match (r.code_verifier, &self.key) {
            (Some(v), Some(key)) if crate::config::sealed::is_sealed(&v) => {
                match key.open(&verifier_aad(digest), &v) {
                    Ok(s) => Some(s.expose().to_string()),
                    Err(_) => {
                        tracing::warn!("an OAuth state's PKCE verifier does not open with SIDEKEY_ENCRYPTION_KEY; treated as unknown");
                        return None;
                    }
                }
            }
            (Some(v), _) if crate::config::sealed::is_sealed(&v) => {
                tracing::warn!("an OAuth state's PKCE verifier is sealed and no SIDEKEY_ENCRYPTION_KEY is set; treated as unknown");
                return None;
            }
            (v, _) => v,
        };
        let mut session_digest = [0u8; 32];
        hex::decode_to_slice(session, &mut session_digest).ok()?;
        Some(OAuthState {
            session: session_digest,
            expires_at: timestamp(&r.expires_at)?,
            provider_config_key: r.provider_config_key,
            connection_config: r.connection_config,
            code_verifier,
            redirect_uri: r.redirect_uri,
            ws_client_id: r.ws_client_id,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Relayed {
    id: String,
    text: String,
}

/// Listens on [`SOCKETS_CHANNEL`] and hands what comes to `tx`, until its receiver is gone.
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustls,
    tx: mpsc::UnboundedSender<(String, String)>,
) {
    let mut backoff = Duration::from_millis(100);
    while !tx.is_closed() {
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let tx = tx.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                let Ok(r) = serde_json::from_str::<Relayed>(n.payload()) else {
                                    continue;
                                };
                                if tx.send((r.id, r.text)).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %chain(&e), "lost the connection that listens for relayed WebSocket messages; reconnecting");
                                return;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {SOCKETS_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        tracing::debug!("listening for relayed WebSocket messages");
                        backoff = Duration::from_millis(100);
                        let _ = driver.await;
                    }
                    Err(e) => {
                        driver.abort();
                        tracing::warn!(error = %chain(&e), "cannot listen for relayed WebSocket messages; retrying");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), retry_in = ?backoff, "cannot connect to {STORE_NAME} to listen for relayed WebSocket messages; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl SessionStore for PgSessions {
    fn relay_socket(&self, ws_client_id: &str, message: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let payload = match serde_json::to_string(&Relayed {
            id: ws_client_id.to_string(),
            text: message.to_string(),
        }) {
            Ok(p) => p,
            Err(_) => return,
        };
        let pool = self.pool.clone();
        rt.spawn(async move {
            let sent = match get(&pool).await {
                Ok(c) => c
                    .execute("SELECT pg_notify($1, $2)", &[&SOCKETS_CHANNEL, &payload])
                    .await
                    .map(|_| ())
                    .map_err(|e| chain(&e)),
                Err(e) => Err(e.0),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot relay a WebSocket message to the other replicas");
            }
        });
    }

    fn relayed_sockets(&self) -> Option<mpsc::UnboundedReceiver<(String, String)>> {
        if self.listening.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen(self.config.clone(), self.tls.clone(), tx));
        Some(rx)
    }

    fn insert(
        &self,
        digest: [u8; 32],
        session: Session,
    ) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let expires_at = session.expires_at.to_string();
            let record = SessionRecord {
                expires_at: expires_at.clone(),
                end_user: session.end_user,
                tags: session.tags,
                allowed_integrations: session.allowed_integrations,
                integrations_config_defaults: session.integrations_config_defaults,
                overrides: session.overrides,
                webhook_url_override: session.webhook_url_override,
                reconnect: session.reconnect,
            };
            let record = serde_json::to_string(&record)
                .map_err(|e| SessionError::Unavailable(e.to_string()))?;
            let client = self.client().await?;
            // Expired sessions go when new ones come (one statement: the index on expires_at
            // keeps it cheap), so the table holds about one TTL's worth of sessions.
            client
                .execute(
                    "WITH gone AS (DELETE FROM sidekey_connect_sessions WHERE expires_at <= now())
                     INSERT INTO sidekey_connect_sessions (token_sha256, record, expires_at)
                     VALUES ($1, $2::text::jsonb, $3::text::timestamptz)",
                    &[&hex::encode(digest), &record, &expires_at],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(())
        })
    }

    fn get(
        &self,
        digest: [u8; 32],
        count: bool,
    ) -> BoxFuture<'_, Result<Option<Found>, SessionError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = if count {
                "UPDATE sidekey_connect_sessions SET attempts = attempts + 1
                 WHERE token_sha256 = $1 AND expires_at > now()
                 RETURNING record::text, attempts"
            } else {
                "SELECT record::text, attempts FROM sidekey_connect_sessions
                 WHERE token_sha256 = $1 AND expires_at > now()"
            };
            let row = client
                .query_opt(sql, &[&hex::encode(digest)])
                .await
                .map_err(|e| unavailable(&e))?;
            let Some(row) = row else { return Ok(None) };
            let record: String = row.get(0);
            let attempts: i32 = row.get(1);
            let record: Value = match serde_json::from_str(&record) {
                Ok(v) => v,
                Err(_) => return Ok(None),
            };
            Ok(Self::session_from(record).map(|s| Found {
                session: Arc::new(s),
                attempts: u32::try_from(attempts).unwrap_or(0),
            }))
        })
    }

    fn delete(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<bool, SessionError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "DELETE FROM sidekey_connect_sessions WHERE token_sha256 = $1
                     RETURNING expires_at > now()",
                    &[&hex::encode(digest)],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
        })
    }

    fn put_state(
        &self,
        digest: [u8; 32],
        state: OAuthState,
    ) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let hex_digest = hex::encode(digest);
            let code_verifier = match (state.code_verifier, &self.key) {
                (Some(v), Some(key)) => Some(
                    key.seal(&verifier_aad(&hex_digest), &v)
                        .map_err(|e| SessionError::Unavailable(e.to_string()))?,
                ),
                (v, _) => v,
            };
            let expires_at = state.expires_at.to_string();
            let record = StateRecord {
                expires_at: expires_at.clone(),
                provider_config_key: state.provider_config_key,
                connection_config: state.connection_config,
                code_verifier,
                redirect_uri: state.redirect_uri,
                ws_client_id: state.ws_client_id,
            };
            let record = serde_json::to_string(&record)
                .map_err(|e| SessionError::Unavailable(e.to_string()))?;
            let client = self.client().await?;
            client
                .execute(
                    "WITH gone AS (DELETE FROM sidekey_oauth_states WHERE expires_at <= now())
                     INSERT INTO sidekey_oauth_states (state_sha256, session_sha256, record, expires_at)
                     VALUES ($1, $2, $3::text::jsonb, $4::text::timestamptz)",
                    &[&hex_digest, &hex::encode(state.session), &record, &expires_at],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(())
        })
    }

    fn take_state(
        &self,
        digest: [u8; 32],
    ) -> BoxFuture<'_, Result<Option<OAuthState>, SessionError>> {
        Box::pin(async move {
            let hex_digest = hex::encode(digest);
            let client = self.client().await?;
            // Deleted whether live or not: a used or expired state never comes back.
            let row = client
                .query_opt(
                    "DELETE FROM sidekey_oauth_states WHERE state_sha256 = $1
                     RETURNING session_sha256, record::text, expires_at > now()",
                    &[&hex_digest],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            let Some(row) = row else { return Ok(None) };
            if !row.get::<_, bool>(2) {
                return Ok(None);
            }
            let session: String = row.get(0);
            let record: String = row.get(1);
            let Ok(record) = serde_json::from_str::<Value>(&record) else {
                return Ok(None);
            };
            Ok(self.state_from(&hex_digest, &session, record))
        })
    }
}
