//! The PostgreSQL store's schema and its migrations, embedded in the binary.
//!
//! Each migration is one SQL text with a number; `sidekey_schema_migrations` records the ones
//! applied. [`migrate`] runs under a session advisory lock, so replicas that start together
//! apply each migration once (the others wait, then find it applied), and each migration is
//! one transaction with its record (PostgreSQL's DDL is transactional: a failed migration
//! leaves nothing behind). A database migrated by a newer sidekey than this one is refused
//! rather than served with a schema this binary does not know.
//!
//! Tables (every secret inside a `record` is sealed with `SIDEKEY_ENCRYPTION_KEY`, the same
//! envelope and associated data as the vault file, see [`crate::config::sealed`]):
//! - `sidekey_head`: one row, the fleet's last change number (`seq`) and the highest record
//!   version committed. Every write locks it (`FOR UPDATE`), so writes commit one at a time
//!   in `seq` order and versions increase in commit order across replicas.
//! - `sidekey_integrations`, `sidekey_connections` (with its `version`), `sidekey_keys` (caller
//!   key digests and scopes): the records, as the vault's JSON shapes.
//! - `sidekey_changes`: one row per committed change, in `seq` order, with the record as it
//!   was written (or none for a delete): what a replica replays after a notification, or after
//!   a reconnection, from the last `seq` it applied.
//! - `sidekey_connect_sessions` (since 2 with `attempts`): Connect sessions by the SHA-256 of
//!   their token, shared by the fleet, so a session made through one replica works through
//!   every other, and its auth attempts are counted in one place (`super::sessions`).
//! - `sidekey_oauth_states` (2): OAuth authorizations in flight by the SHA-256 of their
//!   `state`, taken once by whichever replica the provider's redirect reaches.
//! - `sidekey_connections_newest` (3): the connections in `GET /connections`'s order.
//! - `sidekey_webhook_outbox`: committed auth webhook events; any replica delivers any of
//!   them, one at a time per row (`super::outbox`).

use tokio_postgres::Client;

/// An arbitrary constant naming the migration lock (`pg_advisory_lock` takes a bigint).
const MIGRATION_LOCK: i64 = 0x5349_4445_4b45_5901; // "SIDEKEY" 01

/// The migrations, in order. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE sidekey_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL,
    version bigint NOT NULL
);
INSERT INTO sidekey_head (id, seq, version) VALUES (true, 0, 0);

CREATE TABLE sidekey_integrations (
    unique_key text PRIMARY KEY,
    record jsonb NOT NULL,
    seq bigint NOT NULL
);

CREATE TABLE sidekey_connections (
    provider_config_key text NOT NULL
        REFERENCES sidekey_integrations (unique_key) ON DELETE CASCADE,
    connection_id text NOT NULL,
    version bigint NOT NULL,
    record jsonb NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (provider_config_key, connection_id)
);
CREATE INDEX sidekey_connections_by_id ON sidekey_connections (connection_id);

CREATE TABLE sidekey_keys (
    sha256 text PRIMARY KEY,
    record jsonb NOT NULL,
    seq bigint NOT NULL
);

CREATE TABLE sidekey_changes (
    seq bigint PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('integration', 'connection', 'key')),
    key1 text NOT NULL,
    key2 text,
    version bigint,
    record jsonb,
    committed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sidekey_connect_sessions (
    token_sha256 text PRIMARY KEY,
    record jsonb NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sidekey_connect_sessions_expiry ON sidekey_connect_sessions (expires_at);

CREATE TABLE sidekey_webhook_outbox (
    id bigserial PRIMARY KEY,
    event jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX sidekey_webhook_outbox_due ON sidekey_webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL;
"#,
    ),
    // 2: Connect across the fleet. A session's attempts get a column, so that counting one is
    // a single atomic UPDATE whichever replica serves it; OAuth states get their own table
    // (single use: taken with DELETE … RETURNING). Existing rows keep working (attempts 0).
    (
        2,
        r#"
ALTER TABLE sidekey_connect_sessions ADD COLUMN attempts integer NOT NULL DEFAULT 0;

CREATE TABLE sidekey_oauth_states (
    state_sha256 text PRIMARY KEY,
    session_sha256 text NOT NULL,
    record jsonb NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX sidekey_oauth_states_expiry ON sidekey_oauth_states (expires_at);
"#,
    ),
    // 3: `GET /connections` over a bounded connection cache lists from the table, newest
    // first, and stops when its page is full: an index in that order lets it read only the
    // rows it returns instead of sorting the whole table first.
    (
        3,
        r#"
CREATE INDEX sidekey_connections_newest ON sidekey_connections
    ((record->>'created_at') DESC NULLS LAST, provider_config_key, connection_id);
"#,
    ),
];

/// The newest schema this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the store's schema is at version {found}, newer than this sidekey knows ({known}); run a newer sidekey")]
    Newer { found: i32, known: i32 },
    #[error("migration {version} failed: {source}")]
    Failed {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Applies every migration the database does not have yet; returns the ones applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    // Released whatever happened; a connection that died released it already.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sidekey_schema_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sidekey_schema_migrations",
            &[],
        )
        .await?;
    let current: i32 = row.get(0);
    if current > latest() {
        return Err(MigrateError::Newer {
            found: current,
            known: latest(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let failed = |source| MigrateError::Failed {
            version: *version,
            source,
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO sidekey_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version, "store schema migrated");
        applied.push(*version);
    }
    Ok(applied)
}
