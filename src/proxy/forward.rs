//! Sending a request upstream, attempt after attempt, and relaying the final response.
//!
//! [`send`] runs the attempt loop: each attempt gets a fresh view of the request body from
//! [`Replay`], waits for the response head at most `--response-timeout` counted from the end
//! of the request body, and is judged by [`super::retry`]. A retryable answer is dropped (its
//! body unread) and the next attempt follows after the wait; only the final attempt's response
//! leaves this module, untouched. Connect errors and resets before a response retry too, as
//! long as the body can be sent again from its first byte. A missing response head is never
//! retried: the upstream may be working on the request. While the body is still being sent,
//! the attempt is bounded by the idle timeout instead: it fails when sending stops moving.
//!
//! A request that a reused connection lost before any byte of an answer
//! ([`ClientError::Stale`]: the upstream closed it as idle just as the request went out) is
//! sent again at once on a fresh connection, once, without counting as a `Retries` attempt
//! and without a backoff, when that is safe: the method is idempotent (RFC 9110 §9.2.2: GET,
//! HEAD, OPTIONS, TRACE, PUT, DELETE) or the request carries an `Idempotency-Key`, and the
//! body can be sent again from its first byte (no body, or one still in the replay buffer).
//! Anything else fails as before (`upstream_unreachable`, retried only under `Retries`), so a
//! POST is never sent twice behind the caller's back.
//!
//! An answer with a 1xx status as its final head (hyper surfaces only `101 Switching
//! Protocols`) is refused as 502 `upstream_protocol_error`: sidekey relays no protocol
//! switches, and the connection is closed, never pooled.
//!
//! Errors from the pooled client arrive as a chain; [`classify`] walks it to tell a refused
//! override, a connect timeout, a TLS failure and an unreachable host apart, each with its own
//! error code.
//!
//! [`relay`] prepares the final response for the caller: hop-by-hop headers out, the idle
//! timeout around the body, and decoding when asked.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::idle::IdleBody;
use super::replay::{EndSignal, Replay};
use super::retry::{self, Plan, Policy};
use super::{decompress, headers, ProxyOptions};
use crate::body::ProxyBody;
use crate::config::Integration;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::{ClientError, ConnectError, HttpClient, UpstreamBody};

/// The request line and headers to send, reused by every attempt.
pub struct Outbound<'a> {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// Builds the headers again. The last attempt hands its headers to the connection
    /// instead of a copy (no allocation on the common path); the rare resend after a stale
    /// connection needs them once more.
    pub rebuild: &'a (dyn Fn() -> Option<HeaderMap> + Sync),
}

/// Whether a request that may have reached the upstream can be sent again without asking:
/// an idempotent method (RFC 9110 §9.2.2), or an `Idempotency-Key` saying the caller made it
/// safe to repeat.
fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// How one attempt failed to produce a response.
enum Failure {
    Client(ClientError),
    /// No response head within the response timeout after the body ended.
    HeadTimeout,
    /// Sending made no progress for the idle timeout (a stalled handshake, an upstream that
    /// stopped reading the body, a caller that stopped sending it).
    SendStalled,
}

/// Sends one attempt. Until the request body has ended, the attempt lives as long as the body
/// keeps moving (at most `idle` between two chunks); after that, the response head must come
/// within `timeout` of the body's end. One timer serves both: when it fires, the deadline that
/// applies now is worked out from the body's state and the timer is set again if it lies ahead.
async fn attempt_once(
    client: &HttpClient,
    req: Request<ProxyBody>,
    fresh: bool,
    end: &EndSignal,
    timeout: Duration,
    idle: Duration,
) -> Result<Response<UpstreamBody>, Failure> {
    let fut = async {
        if fresh {
            client.request_fresh(req).await
        } else {
            client.request(req).await
        }
    };
    tokio::pin!(fut);
    let sleep = tokio::time::sleep_until(end.last_progress() + idle.min(timeout));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            res = &mut fut => return res.map_err(Failure::Client),
            () = &mut sleep => {
                let now = tokio::time::Instant::now();
                if end.has_ended() {
                    let deadline = end.last_progress() + timeout;
                    if deadline <= now {
                        return Err(Failure::HeadTimeout);
                    }
                    sleep.as_mut().reset(deadline);
                } else {
                    let deadline = end.last_progress() + idle;
                    if deadline <= now {
                        return Err(Failure::SendStalled);
                    }
                    // The body may end any moment; wake by then plus the response timeout
                    // at the latest, so that a long idle timeout never delays that one.
                    sleep.as_mut().reset(deadline.min(now + timeout));
                }
            }
        }
    }
}

/// One tracing event per attempt: info when the caller asked for retries, debug otherwise.
/// The host is logged, never the URL, whose query may carry an injected credential.
struct Events<'a> {
    loud: bool,
    host: &'a str,
}

impl Events<'_> {
    /// A reused connection died under the request; it goes out again on a fresh one.
    fn stale(&self, attempt: u32) {
        tracing::debug!(
            host = self.host,
            attempt,
            "reused upstream connection closed before answering; sending again on a fresh one"
        );
    }

    fn attempt(
        &self,
        attempt: u32,
        status: Option<StatusCode>,
        error: Option<&'static str>,
        wait: Option<Duration>,
        outcome: &'static str,
    ) {
        let host = self.host;
        let status = status.map(|s| s.as_u16());
        let wait_ms = wait.map(|w| w.as_millis() as u64);
        if self.loud {
            tracing::info!(
                host,
                attempt,
                status,
                error,
                wait_ms,
                outcome,
                "upstream attempt"
            );
        } else {
            tracing::debug!(
                host,
                attempt,
                status,
                error,
                wait_ms,
                outcome,
                "upstream attempt"
            );
        }
    }
}

/// The backoff before retry number `retry` (0 for the first retry), with full jitter.
fn jittered(retry: u32, opts: &ProxyOptions) -> Duration {
    retry::backoff(
        retry,
        opts.retry_backoff_base,
        opts.retry_backoff_max,
        rand::random::<f64>(),
    )
}

/// What follows an attempt.
enum Next {
    /// This is the final attempt, for the reason given (and the wait that was refused).
    Stop(&'static str, Option<Duration>),
    /// Wait, then try again.
    Retry(Duration),
}

/// Judges an answer: final, or retried after which wait.
fn judge(
    res: &Response<UpstreamBody>,
    retry: u32,
    last: bool,
    body: &Replay,
    policy: &Policy<'_>,
    opts: &ProxyOptions,
) -> Next {
    if last || !retry::response_retries(res.status(), res.headers(), policy) {
        return Next::Stop("final", None);
    }
    if !body.prepare_retry() {
        return Next::Stop("body_not_replayable", None);
    }
    let asked = retry::asked_wait(res.headers(), policy.hints, SystemTime::now());
    match retry::plan(asked, jittered(retry, opts), opts.retry_max_wait) {
        Plan::TooLong(d) => Next::Stop("wait_too_long", Some(d)),
        Plan::Wait(d) => Next::Retry(d),
    }
}

/// What the attempts of one request add up to, for the access log and the metrics.
pub struct Tally<'a> {
    metrics: &'a Metrics,
    integration: &'a Integration,
    /// Attempts made so far (across every `send` of one request).
    pub attempts: u32,
}

impl<'a> Tally<'a> {
    pub fn new(metrics: &'a Metrics, integration: &'a Integration) -> Self {
        Self {
            metrics,
            integration,
            attempts: 0,
        }
    }
}

/// An attempt's result for its trace span: the status, or the error code it will answer with.
fn outcome(
    sent: &Result<Response<UpstreamBody>, Failure>,
    body: &Replay,
) -> Result<StatusCode, &'static str> {
    match sent {
        Ok(res) => Ok(res.status()),
        // `String::new()` does not allocate: these only name the code.
        Err(Failure::HeadTimeout | Failure::SendStalled) => {
            Err(ProxyError::UpstreamTimeout(String::new()).code())
        }
        Err(Failure::Client(_)) if body.caller_failed() => {
            Err(ProxyError::BadRequestBody(String::new()).code())
        }
        Err(Failure::Client(e)) => Err(classify(e).code()),
    }
}

/// Sends the request, retrying as `policy` allows, and returns the final attempt's response.
pub async fn send(
    client: &HttpClient,
    mut out: Outbound<'_>,
    body: &Replay,
    policy: &Policy<'_>,
    opts: &ProxyOptions,
    tally: &mut Tally<'_>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let events = Events {
        loud: policy.retries > 0,
        host: out.uri.host().unwrap_or_default(),
    };
    let safe_to_repeat = idempotent(&out.method, &out.headers);
    let mut retry: u32 = 0;
    // The next attempt is the resend on a fresh connection after a stale one.
    let mut resend = false;
    let mut headers_taken = false;
    loop {
        let fresh = std::mem::take(&mut resend);
        let attempt = retry + 1;
        let last = retry >= policy.retries;
        let (req_body, end) = body.attempt();
        let mut req = Request::new(req_body.boxed_unsync());
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = out.uri.clone();
        if headers_taken {
            match (out.rebuild)() {
                Some(h) => out.headers = h,
                None => {
                    return Err(ProxyError::Internal(
                        "the request headers could not be built again".into(),
                    ))
                }
            }
        }
        headers_taken = last;
        *req.headers_mut() = if last {
            std::mem::take(&mut out.headers)
        } else {
            out.headers.clone()
        };
        if !fresh {
            tally.attempts += 1;
            if retry > 0 {
                tally.metrics.retry_of(tally.integration);
            }
        }
        let trace = crate::otel::AttemptSpan::start(
            &out.method,
            &out.uri,
            tally.attempts,
            req.headers_mut(),
        );
        let started = std::time::Instant::now();
        let sent = attempt_once(
            client,
            req,
            fresh,
            &end,
            opts.response_timeout,
            opts.idle_timeout,
        )
        .await;
        trace.end(|| outcome(&sent, body));
        if sent.is_ok() {
            tally
                .metrics
                .upstream_latency_of(tally.integration, started.elapsed());
        }
        let wait = match sent {
            Ok(res) if res.status().is_informational() => {
                // Dropping the response closes its connection (it never joined the pool).
                let err = ProxyError::UpstreamProtocol(format!(
                    "the upstream answered {}, and sidekey does not relay protocol switches",
                    res.status()
                ));
                events.attempt(attempt, Some(res.status()), Some(err.code()), None, "final");
                return Err(err);
            }
            Ok(res) => match judge(&res, retry, last, body, policy, opts) {
                Next::Stop(why, wait) => {
                    events.attempt(attempt, Some(res.status()), None, wait, why);
                    return Ok(res);
                }
                Next::Retry(wait) => {
                    events.attempt(attempt, Some(res.status()), None, Some(wait), "retry");
                    wait
                }
            },
            Err(Failure::HeadTimeout) => {
                let err = ProxyError::UpstreamTimeout(format!(
                    "no response head within {:?} of the end of the request body",
                    opts.response_timeout
                ));
                events.attempt(attempt, None, Some(err.code()), None, "final");
                return Err(err);
            }
            Err(Failure::SendStalled) => {
                let err = ProxyError::UpstreamTimeout(format!(
                    "sending the request made no progress for {:?}",
                    opts.idle_timeout
                ));
                events.attempt(attempt, None, Some(err.code()), None, "final");
                return Err(err);
            }
            Err(Failure::Client(e)) => {
                if body.caller_failed() {
                    return Err(ProxyError::BadRequestBody(
                        "the request body ended with an error".into(),
                    ));
                }
                let stale = matches!(e, ClientError::Stale(_));
                if stale && !fresh && safe_to_repeat && body.prepare_retry() {
                    events.stale(attempt);
                    resend = true;
                    continue;
                }
                let err = classify(&e);
                // Connect errors (timeouts included) and resets; not TLS or policy refusals.
                let transient = matches!(
                    err,
                    ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamTimeout(_)
                );
                if last || !transient || !body.prepare_retry() {
                    events.attempt(attempt, None, Some(err.code()), None, "final");
                    return Err(err);
                }
                let wait = jittered(retry, opts);
                events.attempt(attempt, None, Some(err.code()), Some(wait), "retry");
                wait
            }
        };
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

/// Prepares the final response for the caller: hop-by-hop headers dropped, the idle timeout
/// on the body, and the body decoded when `decompress` asks for it.
pub async fn relay(
    res: Response<UpstreamBody>,
    head_request: bool,
    decompress: bool,
    opts: &ProxyOptions,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = res.into_parts();
    headers::response_headers(&mut parts.headers);
    let mut body = IdleBody::new(body, opts.idle_timeout).boxed_unsync();
    if decompress {
        body = decompress::decode(&mut parts, body, head_request).await?;
    }
    Ok(Response::from_parts(parts, body))
}

/// Maps a client error to sidekey's error codes by walking its source chain.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Blocked(why) => ProxyError::BaseUrlOverrideNotAllowed(why.clone()),
                ConnectError::Timeout(_) => ProxyError::UpstreamTimeout(c.to_string()),
                _ => ProxyError::UpstreamUnreachable(c.to_string()),
            };
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return ProxyError::UpstreamTls(t.to_string());
        }
        // An io::Error's `source()` skips the error it wraps; step into it instead.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    ProxyError::UpstreamUnreachable(err.to_string())
}
