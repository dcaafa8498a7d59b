//! The replica's ear on the fleet: one connection of its own (not from the pool, which would
//! recycle it) that `LISTEN`s on [`super::CHANNEL`]. Each notification carries the change
//! number its commit reached, and the commit's log entries when they fit (see
//! `super::Notice`); the store keeps those and announces the number, and the writer's next
//! refresh applies everything up to it, reading the log only for what was not carried. When the connection drops (the database restarted, the network
//! failed) the task reconnects with backoff and reads the fleet's last change number, so a
//! replica resynchronises from the changes it missed, in order, without a full reload.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::AsyncMessage;

use super::{PgStore, CHANNEL, STORE_NAME};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) async fn run(store: Arc<PgStore>) {
    let mut backoff = BACKOFF_MIN;
    let mut was_listening = false;
    loop {
        match store.config.connect(store.tls.clone()).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                // The connection's messages are read by polling it; notifications go to `rx`.
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return None;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => return Some(super::chain(&e)),
                        }
                    }
                    None
                });
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    // What was committed while this replica was not listening.
                    let row = client
                        .query_one("SELECT seq FROM sidekey_head", &[])
                        .await?;
                    Ok::<i64, tokio_postgres::Error>(row.get(0))
                };
                match listening.await {
                    Ok(seq) => {
                        if was_listening {
                            tracing::info!("listening to {STORE_NAME} again; applying the changes missed meanwhile");
                        } else {
                            tracing::debug!("listening to {STORE_NAME} for changes");
                        }
                        was_listening = true;
                        backoff = BACKOFF_MIN;
                        store.announce(seq);
                        while let Some(payload) = rx.recv().await {
                            store.notified(&payload);
                        }
                        let why = driver
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| "closed".into());
                        tracing::warn!(error = %why, "lost the connection that listens to {STORE_NAME}; reconnecting");
                    }
                    Err(e) => {
                        driver.abort();
                        tracing::warn!(error = %super::chain(&e), "cannot listen to {STORE_NAME}; retrying");
                    }
                }
                drop(client);
            }
            Err(e) => {
                tracing::warn!(error = %super::chain(&e), retry_in = ?backoff, "cannot connect to {STORE_NAME} to listen for changes; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
