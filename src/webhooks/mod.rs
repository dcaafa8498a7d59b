//! Auth webhooks, as Nango sends them, and the connection auth-error state they announce.
//!
//! - [`Hooks`]: [`Hooks::emit`] takes an [`AuthEvent`] (a connection created or overridden,
//!   a refresh failed, an upstream refused a credential), builds Nango's exact body
//!   ([`payload`]), commits it to the [`outbox`] (an append-only file beside the vault,
//!   synced before the event counts), and a delivery task POSTs it signed as Nango signs
//!   ([`sign`]: `X-Nango-Hmac-Sha256`, legacy `X-Nango-Signature`), retrying with
//!   exponential backoff ([`deliver`]). Events left in the outbox by a stop or a crash are
//!   delivered after the next start; a delivered event is removed, so it is not sent again.
//!   With the PostgreSQL store the outbox is the fleet's table ([`outbox::SharedOutbox`]):
//!   any replica delivers any due event, claimed for one attempt at a time.
//! - [`status::AuthErrors`]: which connections have an auth error (`errors: [{type:"auth",
//!   log_id}]` in `GET /connections`), marked by an upstream 401 (or a provider's other
//!   `proxy.auth_error_code`) on an API_KEY or BASIC connection and by a failed OAuth
//!   refresh, cleared by the next 2xx, a successful refresh or a new credential.
//!
//! The webhook URL (`--webhook-url`, or an event's `webhook_url_override`) passes the address
//! policy of `Base-Url-Override` (`netpolicy`): a literal private, loopback or link-local
//! address is refused when it is given, and delivery goes through the upstream client's
//! checked pool, which refuses a name that resolves to one; `--webhook-allow-private` lifts
//! both (and uses the trusted pool). `--resolve` pins are operator-trusted, as for upstreams.
//!
//! No credential ever enters a body: events carry ids, the provider, tags, the end user's
//! ids, and fixed error texts.

pub mod deliver;
pub mod outbox;
pub mod payload;
pub mod sign;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::upstream::UpstreamClient;
use outbox::Outbox;

/// What happened to the connection (Nango's `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new connection (any auth flow, or a `POST /connections` import).
    Creation,
    /// An existing connection authorised again (reconnect, re-import).
    Override,
    /// A refresh (or a check of the credential) failed.
    Refresh,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creation => "creation",
            Self::Override => "override",
            Self::Refresh => "refresh",
        }
    }
}

/// The end user of a connect session, as Nango's `endUser` names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndUser {
    pub id: String,
    pub email: Option<String>,
    pub organization_id: Option<String>,
    pub tags: Option<Map<String, Value>>,
}

/// Nango's `error` of a failed operation: a code and a fixed description, never upstream
/// text or a credential.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    /// `type` in the body, e.g. `refresh_token_external_error`.
    pub kind: String,
    pub description: String,
}

/// One auth event, as the Connect flow, the proxy and the token manager report it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthEvent {
    pub operation: Operation,
    pub success: bool,
    pub connection_id: String,
    pub provider_config_key: String,
    /// The provider's name (`unknown` when empty).
    pub provider: String,
    /// `API_KEY`, `BASIC`, `OAUTH2`, `OAUTH2_CC`.
    pub auth_mode: String,
    /// Nango's environment name; `None`: `--webhook-environment`.
    pub environment: Option<String>,
    /// Only on creation and override from a connect session (never sent on refresh).
    pub end_user: Option<EndUser>,
    /// The connection's tags, when a connection record exists.
    pub tags: Option<Map<String, Value>>,
    pub error: Option<EventError>,
    /// Replaces `--webhook-url` for this event (a connect session's `webhook_url_override`);
    /// `Some("")` means none, as Nango's empty override does.
    pub webhook_url_override: Option<String>,
}

impl AuthEvent {
    /// An event about `conn`, with its provider, auth mode, tags and own webhook URL (its
    /// `webhook_url_override`) filled in.
    pub fn about(conn: &crate::config::Connection, operation: Operation, success: bool) -> Self {
        let extra = conn.extra();
        let tags = extra.tags;
        Self {
            operation,
            success,
            connection_id: conn.connection_id.to_string(),
            provider_config_key: conn.provider_config_key.to_string(),
            provider: conn.integration.provider.name.clone(),
            auth_mode: conn.integration.provider.auth_mode.as_str().to_string(),
            environment: None,
            end_user: None,
            tags: Some(tags),
            error: None,
            webhook_url_override: extra.webhook_url_override,
        }
    }
}

/// Webhook settings from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--webhook-url`, checked by [`check_url`].
    pub url: Option<String>,
    /// `SIDEKEY_WEBHOOK_SIGNING_KEY`.
    pub signing_key: Option<Arc<Secret>>,
    /// `--webhook-environment`: the `environment` of every body.
    pub environment: String,
    /// `--webhook-allow-private`: any address, through the trusted pool.
    pub allow_private: bool,
    /// Backoff between attempts: base, doubled each time, capped.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// One attempt's limit, to the response head.
    pub timeout: Duration,
    /// An event still undelivered this long after it happened is dropped.
    pub give_up_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: None,
            signing_key: None,
            environment: "prod".into(),
            allow_private: false,
            retry_base: Duration::from_secs(3),
            retry_max: Duration::from_secs(600),
            timeout: Duration::from_secs(20),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a webhook URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlError {
    #[error("the webhook URL must be an absolute http:// or https:// URL")]
    Invalid,
    #[error("the webhook URL points to a private, loopback or link-local address; pass --webhook-allow-private to allow it")]
    NotPublic,
}

/// Nango's synchronous outbound check (`validateOutboundUrlSync`): an absolute http(s) URL
/// whose host is not a literal non-public address nor `localhost`. A name that resolves to a
/// private address is refused later, by the checked pool's connector, at delivery.
pub fn check_url(url: &str, allow_private: bool) -> Result<http::Uri, UrlError> {
    let uri: http::Uri = url.trim().parse().map_err(|_| UrlError::Invalid)?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(UrlError::Invalid),
    }
    let host = uri.host().ok_or(UrlError::Invalid)?;
    if host.is_empty() {
        return Err(UrlError::Invalid);
    }
    if allow_private {
        return Ok(uri);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let local_name =
        bare.eq_ignore_ascii_case("localhost") || bare.to_ascii_lowercase().ends_with(".localhost");
    let private_ip = bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !crate::netpolicy::is_public(ip));
    if local_name || private_ip {
        return Err(UrlError::NotPublic);
    }
    Ok(uri)
}

/// A request to the committer task.
struct Emit {
    url: String,
    body: String,
    committed: Option<oneshot::Sender<bool>>,
}

/// The webhook sender: cheap to share; [`Hooks::emit`] never blocks.
pub struct Hooks {
    settings: Arc<Settings>,
    /// `None` when webhooks are off (no signing key): events are dropped.
    tx: Option<mpsc::UnboundedSender<Emit>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("enabled", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// Webhooks off: every event is dropped (an app built without settings, e.g. in tests).
    pub fn disabled() -> Self {
        Self {
            settings: Arc::new(Settings::default()),
            tx: None,
        }
    }

    /// Starts the committer and delivery tasks on the current runtime; events the outbox
    /// still holds from an earlier run are delivered first. Without a signing key webhooks
    /// stay off (a receiver could not verify them): `run` refuses `--webhook-url` without one.
    /// With a [`outbox::Store::Shared`] outbox the delivery task claims due events from it,
    /// whichever process committed them.
    pub fn start(
        settings: Settings,
        outbox: impl Into<outbox::Store>,
        client: &UpstreamClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        let settings = Arc::new(settings);
        let Some(key) = settings.signing_key.clone() else {
            return Self { settings, tx: None };
        };
        let http = if settings.allow_private {
            client.trusted.clone()
        } else {
            client.checked.clone()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        match outbox.into() {
            outbox::Store::Local(outbox) => {
                let (queue_tx, queue_rx) = mpsc::unbounded_channel();
                tokio::spawn(commit(rx, outbox.clone(), queue_tx, metrics.clone()));
                tokio::spawn(deliver::run(deliver::Delivery {
                    settings: settings.clone(),
                    key,
                    outbox,
                    http,
                    metrics,
                    incoming: queue_rx,
                }));
            }
            outbox::Store::Shared(outbox) => {
                let (poke_tx, poke_rx) = mpsc::unbounded_channel();
                tokio::spawn(commit_shared(rx, outbox.clone(), poke_tx, metrics.clone()));
                tokio::spawn(deliver::run_shared(deliver::SharedDelivery {
                    settings: settings.clone(),
                    key,
                    outbox,
                    http,
                    metrics,
                    poke: poke_rx,
                }));
            }
        }
        Self {
            settings,
            tx: Some(tx),
        }
    }

    /// Whether events go anywhere at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Where `ev` goes: its override when it has a non-empty one, else `--webhook-url`.
    fn target(&self, ev: &AuthEvent) -> Option<String> {
        let url = match ev.webhook_url_override.as_deref() {
            Some(o) if !o.trim().is_empty() => o.trim().to_string(),
            _ => self.settings.url.clone()?,
        };
        match check_url(&url, self.settings.allow_private) {
            Ok(_) => Some(url),
            Err(e) => {
                // As Nango does: a URL the policy refuses is skipped with a log line.
                tracing::warn!(target: "sidekey::webhooks", provider_config_key = %ev.provider_config_key,
                    connection_id = %ev.connection_id, reason = %e, "webhook not sent: URL refused");
                None
            }
        }
    }

    /// Queues `ev` for commit and delivery; returns at once. Nothing happens when webhooks are
    /// off or no URL applies.
    pub fn emit(&self, ev: AuthEvent) {
        self.send(ev, None);
    }

    /// Like [`Hooks::emit`], and resolves once the event is committed to the outbox (`true`),
    /// or was not (`false`: off, no URL, or the outbox could not write).
    pub async fn emit_committed(&self, ev: AuthEvent) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(ev, Some(tx));
        rx.await.unwrap_or(false)
    }

    fn send(&self, ev: AuthEvent, committed: Option<oneshot::Sender<bool>>) {
        let (Some(tx), Some(url)) = (&self.tx, self.target(&ev)) else {
            if let Some(c) = committed {
                let _ = c.send(false);
            }
            return;
        };
        let body = payload::auth_body(&ev, &self.settings.environment);
        tracing::debug!(target: "sidekey::webhooks", operation = ev.operation.as_str(), success = ev.success,
            provider_config_key = %ev.provider_config_key, connection_id = %ev.connection_id, "webhook event queued");
        if let Err(mpsc::error::SendError(e)) = tx.send(Emit {
            url,
            body,
            committed,
        }) {
            if let Some(c) = e.committed {
                let _ = c.send(false);
            }
        }
    }
}

/// Commits queued events in groups (one write and one sync for everything waiting), answers
/// the waiters, and hands the records to the delivery task.
async fn commit(
    mut rx: mpsc::UnboundedReceiver<Emit>,
    outbox: Arc<dyn Outbox>,
    queue: mpsc::UnboundedSender<outbox::Record>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let mut events = Vec::with_capacity(group.len());
        let mut waiters = Vec::with_capacity(group.len());
        for e in group {
            events.push((e.url, e.body));
            waiters.push(e.committed);
        }
        let n = events.len();
        let o = outbox.clone();
        let now = jiff::Timestamp::now().as_millisecond();
        let done = tokio::task::spawn_blocking(move || o.append(events, now)).await;
        let ok = match done {
            Ok(Ok(records)) => {
                tracing::info!(target: "sidekey::webhooks", events = n, outbox = outbox.kind(), "webhook events committed");
                for r in records {
                    let _ = queue.send(r);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(target: "sidekey::webhooks", events = n, error = %e, "cannot commit webhook events; they are lost");
                metrics.webhook_delivery("lost");
                false
            }
            Err(_) => false,
        };
        for w in waiters.into_iter().flatten() {
            let _ = w.send(ok);
        }
    }
}

/// Events [`commit_shared`] keeps in memory at most while the shared outbox refuses them; past
/// this the oldest are dropped.
const HELD_MAX: usize = 10_000;

/// [`commit`] for a shared outbox: the group is one insert, and the delivery task is poked
/// (it claims the events from the outbox itself, as any other replica may). While the outbox
/// refuses (the database is down) the events are kept here and the insert is tried again
/// with backoff, with whatever came meanwhile: an outage delays them instead of losing them,
/// unless this process stops first (they were never committed) or [`HELD_MAX`] is passed.
async fn commit_shared(
    mut rx: mpsc::UnboundedReceiver<Emit>,
    outbox: Arc<dyn outbox::SharedOutbox>,
    poke: mpsc::UnboundedSender<()>,
    metrics: Arc<Metrics>,
) {
    let mut held: Vec<Emit> = Vec::new();
    // Set while the outbox refuses: when to try again.
    let mut retry: Option<std::time::Duration> = None;
    let mut open = true;
    loop {
        match retry {
            None => match rx.recv().await {
                Some(e) => held.push(e),
                None => return,
            },
            // Gathers what comes until the next try is due.
            Some(wait) => {
                let due = tokio::time::sleep(wait);
                tokio::pin!(due);
                loop {
                    tokio::select! {
                        e = rx.recv(), if open => match e {
                            Some(e) => held.push(e),
                            None => open = false,
                        },
                        () = &mut due => break,
                    }
                }
            }
        }
        while let Ok(more) = rx.try_recv() {
            held.push(more);
        }
        let events: Vec<(String, String)> = held
            .iter()
            .map(|e| (e.url.clone(), e.body.clone()))
            .collect();
        let n = events.len();
        match outbox.append(events).await {
            Ok(_) => {
                tracing::info!(target: "sidekey::webhooks", events = n, outbox = outbox.kind(), "webhook events committed");
                let _ = poke.send(());
                for w in held.drain(..).filter_map(|e| e.committed) {
                    let _ = w.send(true);
                }
                retry = None;
                if !open {
                    return;
                }
            }
            Err(e) => {
                let next = retry.map_or(std::time::Duration::from_secs(1), |w| {
                    (w * 2).min(std::time::Duration::from_secs(30))
                });
                tracing::warn!(target: "sidekey::webhooks", events = n, error = %e, retry_in = ?next,
                    "cannot commit webhook events yet; keeping them in memory and trying again");
                retry = Some(next);
                if held.len() > HELD_MAX {
                    let dropped = held.len() - HELD_MAX;
                    tracing::error!(target: "sidekey::webhooks", events = dropped,
                        "too many webhook events wait for the outbox; the oldest are lost");
                    for e in held.drain(..dropped) {
                        metrics.webhook_delivery("lost");
                        if let Some(w) = e.committed {
                            let _ = w.send(false);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_follow_the_override_policy() {
        for ok in [
            "https://hooks.example.com/nango",
            "http://8.8.8.8:8080/x",
            "https://[2606:4700::1111]/",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for private in [
            "http://127.0.0.1:9/",
            "http://localhost/",
            "http://a.localhost/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert_eq!(
                check_url(private, false),
                Err(UrlError::NotPublic),
                "{private}"
            );
            assert!(
                check_url(private, true).is_ok(),
                "{private} allowed by flag"
            );
        }
        for bad in ["ftp://x/", "/relative", "", "http://"] {
            assert_eq!(check_url(bad, true), Err(UrlError::Invalid), "{bad}");
        }
    }
}
