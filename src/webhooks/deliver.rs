//! The delivery task: POSTs committed events to their URL, signed with the key current at
//! the attempt, and removes each from the outbox once it is delivered or abandoned.
//!
//! Events wait in a queue ordered by when they are next due; one attempt at a time, so an
//! unreachable receiver costs one socket, and an event that fails goes to the back of the
//! line for its backoff while the others proceed. As Nango does: network errors, timeouts
//! and 5xx are retried (and 408 and 429, which mean "later"); any other status outside 2xx
//! is final (a 3xx is not followed). Unlike Nango's three tries, the backoff (`retry_base`
//! doubled each time up to `retry_max`) runs until the event is `give_up_after` old, because
//! the outbox is durable: a receiver down for an hour still gets its events.
//!
//! With a fleet's shared outbox ([`run_shared`]) there is no queue in memory: the task claims
//! the event due first from the database (its own or another replica's), attempts it, and
//! records the outcome (done, or due again after the backoff, counted from the attempts every
//! replica made). A claim is held for the attempt only, so one event is never being sent by
//! two replicas at once, and the event of a replica that died (mid-attempt or before) is
//! claimed by the next replica that looks: after a commit here, or every [`POLL`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::outbox::{Claimed, Finish, Outbox, Record, SharedOutbox};
use super::sign;
use super::Settings;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::upstream::HttpClient;

/// The header names, built once.
pub const HMAC_HEADER: &str = "x-nango-hmac-sha256";
pub const LEGACY_HEADER: &str = "x-nango-signature";

/// What the delivery task works with.
pub struct Delivery {
    pub settings: Arc<Settings>,
    pub key: Arc<Secret>,
    pub outbox: Arc<dyn Outbox>,
    pub http: HttpClient,
    pub metrics: Arc<Metrics>,
    pub incoming: mpsc::UnboundedReceiver<Record>,
}

/// How often a replica looks for due events in a shared outbox when nothing pokes it.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a claim outlives the attempt's own timeout before the database drops it (a
/// process that froze rather than died).
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// What the delivery task of a shared outbox works with.
pub struct SharedDelivery {
    pub settings: Arc<Settings>,
    pub key: Arc<Secret>,
    pub outbox: Arc<dyn SharedOutbox>,
    pub http: HttpClient,
    pub metrics: Arc<Metrics>,
    /// A commit on this replica: look at once. Closed when the hooks go away.
    pub poke: mpsc::UnboundedReceiver<()>,
}

struct Waiting {
    record: Record,
    attempts: u32,
}

/// How one attempt ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    Retry(&'static str),
    Final(String),
}

/// The backoff before attempt `attempts + 1`: base · 2^(attempts−1), at most `max`.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    base.saturating_mul(factor).min(max)
}

/// Runs until the committer goes away and the queue is empty.
pub async fn run(mut d: Delivery) {
    // (due, id) → event: the earliest due first, in commit order among equals.
    let mut queue: BTreeMap<(Instant, u64), Waiting> = BTreeMap::new();
    let o = d.outbox.clone();
    match tokio::task::spawn_blocking(move || o.pending()).await {
        Ok(Ok(left)) if !left.is_empty() => {
            tracing::info!(target: "sidekey::webhooks", events = left.len(), "delivering webhook events left from an earlier run");
            let now = Instant::now();
            for r in left {
                queue.insert(
                    (now, r.id),
                    Waiting {
                        record: r,
                        attempts: 0,
                    },
                );
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(target: "sidekey::webhooks", error = %e, "cannot read the webhook outbox")
        }
        Err(_) => {}
    }
    let mut open = true;
    loop {
        d.metrics.set_webhook_pending(queue.len());
        let next_due = queue.keys().next().map(|(due, _)| *due);
        tokio::select! {
            biased;
            r = d.incoming.recv(), if open => match r {
                Some(r) => {
                    queue.insert((Instant::now(), r.id), Waiting { record: r, attempts: 0 });
                }
                None => open = false,
            },
            () = sleep_until(next_due) => {
                let Some(((_, id), mut w)) = queue.pop_first() else { continue };
                w.attempts += 1;
                let outcome = attempt(&d, &w.record).await;
                let age = jiff::Timestamp::now().as_millisecond().saturating_sub(w.record.at);
                let expired = u128::try_from(age).unwrap_or(0) >= d.settings.give_up_after.as_millis();
                let done = match judge_outcome(&d.metrics, &d.settings, id, w.attempts, &outcome, expired) {
                    Finish::Done => true,
                    Finish::RetryAfter(wait) => {
                        queue.insert((Instant::now() + wait, id), w);
                        false
                    }
                };
                if done {
                    let o = d.outbox.clone();
                    match tokio::task::spawn_blocking(move || o.remove(&[id])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(target: "sidekey::webhooks", id, error = %e,
                            "cannot record a finished webhook in the outbox; it may be sent again after a restart"),
                        Err(_) => {}
                    }
                }
            }
        }
        if !open && queue.is_empty() {
            return;
        }
    }
}

/// Delivers from a shared outbox until the hooks go away (see the module docs).
pub async fn run_shared(mut d: SharedDelivery) {
    let hold = d.settings.timeout.saturating_add(CLAIM_MARGIN);
    let mut failing = Duration::ZERO;
    loop {
        let wait = match d.outbox.claim(hold).await {
            Ok(Claimed::Event(claim)) => {
                failing = Duration::ZERO;
                let id = claim.record.id;
                let attempts = claim.attempts.saturating_add(1);
                let outcome = attempt_with(&d.settings, &d.key, &d.http, &claim.record).await;
                let age = jiff::Timestamp::now()
                    .as_millisecond()
                    .saturating_sub(claim.record.at);
                let expired =
                    u128::try_from(age).unwrap_or(0) >= d.settings.give_up_after.as_millis();
                let how = judge_outcome(&d.metrics, &d.settings, id, attempts, &outcome, expired);
                if let Err(e) = claim.finish(how).await {
                    tracing::error!(target: "sidekey::webhooks", id, error = %e,
                        "cannot record a webhook attempt in the outbox; it will be attempted again");
                }
                continue;
            }
            Ok(Claimed::Idle { pending, next_due }) => {
                failing = Duration::ZERO;
                d.metrics.set_webhook_pending(pending);
                next_due.map_or(POLL, |due| due.min(POLL))
            }
            Err(e) => {
                failing = (failing * 2).clamp(POLL, Duration::from_secs(30));
                tracing::warn!(target: "sidekey::webhooks", error = %e, retry_in = ?failing,
                    "cannot read the webhook outbox");
                failing
            }
        };
        tokio::select! {
            p = d.poke.recv() => {
                if p.is_none() {
                    return;
                }
                // Commits made during an attempt poked once each; one look serves them all.
                while d.poke.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Logs and counts an attempt's outcome; what the outbox should do with the event.
fn judge_outcome(
    metrics: &Metrics,
    settings: &Settings,
    id: u64,
    attempts: u32,
    outcome: &Outcome,
    expired: bool,
) -> Finish {
    match outcome {
        Outcome::Delivered => {
            metrics.webhook_delivery("delivered");
            tracing::info!(target: "sidekey::webhooks", id, attempts, "webhook delivered");
            Finish::Done
        }
        Outcome::Final(why) => {
            metrics.webhook_delivery("failed");
            tracing::warn!(target: "sidekey::webhooks", id, attempts, reason = %why, "webhook refused by its receiver; not retried");
            Finish::Done
        }
        Outcome::Retry(_) if expired => {
            metrics.webhook_delivery("expired");
            tracing::warn!(target: "sidekey::webhooks", id, attempts, "webhook undelivered for too long; dropped");
            Finish::Done
        }
        Outcome::Retry(why) => {
            metrics.webhook_delivery("retry");
            let wait = backoff(attempts, settings.retry_base, settings.retry_max);
            tracing::info!(target: "sidekey::webhooks", id, attempts, reason = why,
                wait_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
            Finish::RetryAfter(wait)
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The signed request for one event.
pub fn request(record: &Record, key: &Secret) -> Result<Request<crate::body::ProxyBody>, String> {
    let k = key.expose().as_bytes();
    let b = record.body.as_bytes();
    let header = |s: String| HeaderValue::from_str(&s).map_err(|_| "bad header".to_string());
    Request::builder()
        .method(Method::POST)
        .uri(record.url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sidekey/", env!("CARGO_PKG_VERSION")),
        )
        .header(HMAC_HEADER, header(sign::hmac_sha256_hex(k, b))?)
        .header(LEGACY_HEADER, header(sign::legacy_signature(k, b))?)
        .body(crate::body::full(record.body.clone()))
        .map_err(|_| "the webhook URL is not a valid URI".to_string())
}

async fn attempt(d: &Delivery, record: &Record) -> Outcome {
    attempt_with(&d.settings, &d.key, &d.http, record).await
}

async fn attempt_with(
    settings: &Settings,
    key: &Secret,
    http: &HttpClient,
    record: &Record,
) -> Outcome {
    let req = match request(record, key) {
        Ok(r) => r,
        Err(e) => return Outcome::Final(e),
    };
    match tokio::time::timeout(settings.timeout, http.request(req)).await {
        Err(_) => Outcome::Retry("timeout"),
        Ok(Err(e)) => {
            tracing::debug!(target: "sidekey::webhooks", error = %crate::secret::redact_urls(&error_chain(&e)), "webhook attempt failed");
            Outcome::Retry("unreachable")
        }
        Ok(Ok(res)) => judge(res.status()),
    }
}

fn judge(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry("status")
    } else {
        Outcome::Final(format!("status {}", status.as_u16()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(3), Duration::from_secs(20));
        assert_eq!(backoff(1, b, m), Duration::from_secs(3));
        assert_eq!(backoff(2, b, m), Duration::from_secs(6));
        assert_eq!(backoff(3, b, m), Duration::from_secs(12));
        assert_eq!(backoff(4, b, m), m);
        assert_eq!(backoff(u32::MAX, b, m), m);
    }

    #[test]
    fn which_answers_are_retried() {
        assert_eq!(judge(StatusCode::OK), Outcome::Delivered);
        assert_eq!(judge(StatusCode::NO_CONTENT), Outcome::Delivered);
        for s in [500, 502, 503, 408, 429] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(judge(s), Outcome::Retry("status"), "{s}");
        }
        for s in [301, 400, 401, 404] {
            let s = StatusCode::from_u16(s).expect("status");
            assert!(matches!(judge(s), Outcome::Final(_)), "{s}");
        }
    }

    #[test]
    fn requests_carry_both_signatures_of_the_exact_body() {
        let r = Record {
            id: 1,
            url: "https://hooks.example/n".into(),
            body: r#"{"a":1}"#.into(),
            at: 0,
        };
        let req = request(&r, &Secret::new("k")).expect("request");
        let h = |n: &str| req.headers()[n].to_str().expect("ascii").to_string();
        assert_eq!(h(HMAC_HEADER), sign::hmac_sha256_hex(b"k", br#"{"a":1}"#));
        assert_eq!(
            h(LEGACY_HEADER),
            sign::legacy_signature(b"k", br#"{"a":1}"#)
        );
        assert_eq!(h("content-type"), "application/json");
    }
}
