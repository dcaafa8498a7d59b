//! The fleet's webhook outbox in `sidekey_webhook_outbox`: every replica commits its events
//! there and delivers whichever are due, its own or another's.
//!
//! A row is one event: `event` holds `{"url", "body"}` (the body as a JSON *string*, so the
//! exact bytes that get signed survive jsonb), `attempts` counts the attempts every replica
//! made, `next_attempt_at` is when it is due, `delivered_at` is set once it is finished
//! (delivered, refused for good, or given up) and the row is deleted a day later.
//!
//! A claim ([`PgOutbox::claim`]) is a transaction that locks the row due first with `FOR UPDATE
//! SKIP LOCKED` and stays open for the attempt: another replica's claim skips that row, so one
//! event is never being sent by two replicas at once. The transaction ends by recording the
//! outcome (`COMMIT`), or — when its replica dies, even by `kill -9` — by the database
//! dropping the connection, which releases the row at once, due as before; a replica that
//! freezes instead is cut off by `idle_in_transaction_session_timeout`, set longer than an
//! attempt may last. The window between a receiver's 2xx and the `COMMIT` is the one place an
//! event can be sent twice (at least once, as every webhook sender).

use std::io;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{chain, get, STORE_NAME};
use crate::webhooks::outbox::{Claim, Claimed, Finish, Finisher, Record, SharedOutbox};

/// How long a finished row is kept (for a look at what was sent) before it is deleted.
const KEEP_FINISHED: &str = "1 day";
/// Finished rows are pruned at most this often, by each replica.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The outbox over the store's pool.
pub struct PgOutbox {
    pool: Pool,
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox").finish_non_exhaustive()
    }
}

fn io_error(e: &dyn std::error::Error) -> io::Error {
    io::Error::other(format!("{STORE_NAME}: {}", chain(e)))
}

async fn client(pool: &Pool) -> io::Result<Object> {
    get(pool)
        .await
        .map_err(|e| io::Error::other(format!("{STORE_NAME} is unreachable: {}", e.0)))
}

impl PgOutbox {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            pruned: std::sync::Mutex::new(None),
        }
    }

    /// Whether this replica should prune finished rows now (at most every [`PRUNE_EVERY`]).
    fn prune_due(&self) -> bool {
        let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < PRUNE_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    async fn claim_on(client: Object, hold: Duration) -> io::Result<Claimed> {
        // The connection leaves the pool for the claim: it goes back only after COMMIT or
        // ROLLBACK (see Held's Drop).
        let held = Held(Some(client));
        let c = held.client()?;
        c.batch_execute(&format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
            hold.as_millis()
        ))
        .await
        .map_err(|e| io_error(&e))?;
        let row = c
            .query_opt(
                "SELECT id, event::text, attempts, (extract(epoch FROM created_at) * 1000)::bigint
                 FROM sidekey_webhook_outbox
                 WHERE delivered_at IS NULL AND next_attempt_at <= clock_timestamp()
                 ORDER BY next_attempt_at, id
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await
            .map_err(|e| io_error(&e))?;
        let Some(row) = row else {
            // Nothing this replica may take: how many wait (rows another replica holds
            // included), and when the first that is not due yet will be. A row that is due but
            // held is not waited for: it is due again only if its holder dies, which the
            // caller's regular look finds (waiting for it here would poll in a loop).
            let row = c
                .query_one(
                    "SELECT count(*),
                            (extract(epoch FROM min(next_attempt_at)
                                FILTER (WHERE next_attempt_at > clock_timestamp())
                                - clock_timestamp()) * 1000)::bigint
                     FROM sidekey_webhook_outbox WHERE delivered_at IS NULL",
                    &[],
                )
                .await
                .map_err(|e| io_error(&e))?;
            held.end("COMMIT").await.map_err(|e| io_error(&e))?;
            let pending: i64 = row.get(0);
            let next_due: Option<i64> = row.get(1);
            return Ok(Claimed::Idle {
                pending: usize::try_from(pending).unwrap_or(0),
                next_due: next_due.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            });
        };
        let id: i64 = row.get(0);
        let event: String = row.get(1);
        let attempts: i32 = row.get(2);
        let at: i64 = row.get(3);
        let event: Value = serde_json::from_str(&event).unwrap_or(Value::Null);
        let (Some(url), Some(body)) = (event["url"].as_str(), event["body"].as_str()) else {
            // Not an event this sidekey can send: finished, so it does not block the line.
            tracing::warn!(target: "sidekey::webhooks", id, "a webhook outbox row does not read; dropped");
            Box::new(PgFinisher { held, id })
                .finish(Finish::Done)
                .await?;
            // Idle with nothing to wait for: the caller claims again at once.
            return Ok(Claimed::Idle {
                pending: 0,
                next_due: Some(Duration::ZERO),
            });
        };
        Ok(Claimed::Event(Claim {
            record: Record {
                id: u64::try_from(id).unwrap_or(0),
                url: url.to_string(),
                body: body.to_string(),
                at,
            },
            attempts: u32::try_from(attempts).unwrap_or(0),
            finisher: Box::new(PgFinisher { held, id }),
        }))
    }
}

impl SharedOutbox for PgOutbox {
    fn append(&self, events: Vec<(String, String)>) -> BoxFuture<'_, io::Result<usize>> {
        Box::pin(async move {
            let n = events.len();
            let rows: Vec<String> = events
                .into_iter()
                .map(|(url, body)| json!({"url": url, "body": body}).to_string())
                .collect();
            let client = client(&self.pool).await?;
            // One statement for the group: all committed, or none.
            client
                .execute(
                    "INSERT INTO sidekey_webhook_outbox (event)
                     SELECT e::jsonb FROM unnest($1::text[]) AS e",
                    &[&rows],
                )
                .await
                .map_err(|e| io_error(&e))?;
            Ok(n)
        })
    }

    fn claim(&self, hold: Duration) -> BoxFuture<'_, io::Result<Claimed>> {
        Box::pin(async move {
            let c = client(&self.pool).await?;
            if self.prune_due() {
                let sql = format!(
                    "DELETE FROM sidekey_webhook_outbox
                     WHERE delivered_at < now() - interval '{KEEP_FINISHED}'"
                );
                if let Err(e) = c.execute(sql.as_str(), &[]).await {
                    tracing::debug!(target: "sidekey::webhooks", error = %chain(&e), "cannot prune the webhook outbox");
                }
            }
            Self::claim_on(c, hold).await
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// A pooled connection inside a transaction. Dropped without [`Held::end`], the connection is
/// closed rather than returned to the pool (the database rolls the transaction back).
struct Held(Option<Object>);

impl Held {
    fn client(&self) -> io::Result<&Object> {
        // Set at creation and taken only by `end`, which consumes the value: never `None` here.
        self.0
            .as_ref()
            .ok_or_else(|| io::Error::other("the outbox claim has no connection"))
    }

    /// Ends the transaction with `sql` (COMMIT or ROLLBACK); the connection goes back to the
    /// pool if that worked, and is closed if not.
    async fn end(mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let Some(client) = self.0.take() else {
            return Ok(());
        };
        match client.batch_execute(sql).await {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(Object::take(client));
                Err(e)
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // Never back into the pool inside a transaction.
            drop(Object::take(client));
        }
    }
}

/// Records a claimed attempt's outcome and commits, which releases the row.
struct PgFinisher {
    held: Held,
    id: i64,
}

impl Finisher for PgFinisher {
    fn finish(self: Box<Self>, how: Finish) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(async move {
            let PgFinisher { held, id } = *self;
            let c = held.client()?;
            let done = match how {
                Finish::Done => {
                    c.execute(
                        "UPDATE sidekey_webhook_outbox
                         SET attempts = attempts + 1, delivered_at = clock_timestamp()
                         WHERE id = $1",
                        &[&id],
                    )
                    .await
                }
                Finish::RetryAfter(wait) => {
                    c.execute(
                        "UPDATE sidekey_webhook_outbox
                         SET attempts = attempts + 1,
                             next_attempt_at = clock_timestamp() + make_interval(secs => $2::float8)
                         WHERE id = $1",
                        &[&id, &wait.as_secs_f64()],
                    )
                    .await
                }
            };
            done.map_err(|e| io_error(&e))?;
            held.end("COMMIT").await.map_err(|e| io_error(&e))
        })
    }
}
