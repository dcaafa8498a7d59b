//! When to try an upstream request again, and how long to wait first: pure functions, so each
//! rule has a unit test without a socket or a clock.
//!
//! Which statuses retry: 5xx and 429 by default; a provider's `proxy.retry.error_code` list
//! replaces those defaults; the caller's `Retry-On` statuses add to whichever applies. A
//! provider's `remaining` header reading `0` also retries, but only on a non-2xx response (a
//! successful answer that spent the last of the quota is still the answer).
//!
//! How long to wait: the longest of the provider's `at` headers (a reset time), its `after`
//! headers (seconds) and the standard `Retry-After`; without any of them, exponential backoff
//! with full jitter. A wait the upstream asks for that is longer than `--retry-max-wait` means
//! "give the caller this response now" instead of holding the request.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::providers::RetryHints;

/// What decides whether and how a request is retried.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The caller's `Retries` (already capped at 10): how many attempts may follow the first.
    pub retries: u32,
    /// The caller's `Retry-On` statuses.
    pub retry_on: &'a [u16],
    /// The provider's `proxy.retry` hints.
    pub hints: &'a RetryHints,
}

/// Whether `status` is one that retries under `policy` (ignoring the `remaining` header).
pub fn status_retries(status: u16, policy: &Policy<'_>) -> bool {
    if policy.retry_on.contains(&status) {
        return true;
    }
    match &policy.hints.error_codes {
        Some(ranges) => ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)),
        None => status == 429 || (500..=599).contains(&status),
    }
}

/// Whether the provider's `remaining` header says the quota is spent.
fn quota_spent(headers: &HeaderMap, hints: &RetryHints) -> bool {
    hints
        .remaining
        .as_ref()
        .and_then(|name| headers.get(name))
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"0")
}

/// Whether a response with this status and these headers should be tried again.
pub fn response_retries(status: StatusCode, headers: &HeaderMap, policy: &Policy<'_>) -> bool {
    status_retries(status.as_u16(), policy)
        || (!status.is_success() && quota_spent(headers, policy.hints))
}

/// Numbers below this cannot be a current epoch time in seconds (it is 2001-09-09), so a
/// reset header holding one is read as seconds from now (the IETF `RateLimit-Reset` style).
const EPOCH_SECONDS_FLOOR: f64 = 1e9;
/// Numbers from here up are epoch milliseconds (1e11 seconds would be the year 5138).
const EPOCH_MILLIS_FLOOR: f64 = 1e11;

/// How long from `now` a wait header asks for. The value may be seconds to wait, an epoch time
/// in seconds or milliseconds, or an HTTP date; a time in the past asks for no wait. `None`
/// when the value is none of these.
pub fn parse_wait(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        if n < EPOCH_SECONDS_FLOOR {
            return Duration::try_from_secs_f64(n).ok();
        }
        let epoch_secs = if n >= EPOCH_MILLIS_FLOOR {
            n / 1000.0
        } else {
            n
        };
        let at =
            SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(epoch_secs).ok()?)?;
        return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The longest wait the response asks for, if it asks at all.
///
/// The provider's `at`/`after` headers describe its rate-limit window; they are ignored when
/// the provider's `remaining` header is present and shows quota left, because then the window's
/// reset is not what this response is waiting on (many APIs send the reset time on every
/// response, including a 502 that merits a quick retry). `Retry-After` always counts.
pub fn asked_wait(headers: &HeaderMap, hints: &RetryHints, now: SystemTime) -> Option<Duration> {
    let quota_left = hints
        .remaining
        .as_ref()
        .and_then(|name| headers.get(name))
        .is_some_and(|v| v.as_bytes().trim_ascii() != b"0");
    let provider = hints
        .at
        .iter()
        .chain(hints.after.iter())
        .filter(|_| !quota_left)
        .flat_map(|name| headers.get_all(name));
    headers
        .get_all(http::header::RETRY_AFTER)
        .iter()
        .chain(provider)
        .filter_map(|v| parse_wait(v, now))
        .max()
}

/// Full-jitter exponential backoff before retry number `retry` (0 for the first retry):
/// a uniform pick (`unit` in `[0, 1)`) from zero to `min(cap, base * 2^retry)`.
pub fn backoff(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// What to do after a retryable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Wait this long, then try again.
    Wait(Duration),
    /// The upstream asks for a wait longer than the limit: return its response now.
    TooLong(Duration),
}

/// Chooses the wait: the upstream's ask when there is one (unless it exceeds `max_wait`),
/// else `backoff`.
pub fn plan(asked: Option<Duration>, backoff: Duration, max_wait: Duration) -> Plan {
    match asked {
        Some(d) if d > max_wait => Plan::TooLong(d),
        Some(d) => Plan::Wait(d),
        None => Plan::Wait(backoff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use proptest::prelude::*;

    fn hints(at: &[&str], after: &[&str], remaining: Option<&str>) -> RetryHints {
        let n = |s: &&str| HeaderName::from_bytes(s.as_bytes()).expect("name");
        RetryHints {
            at: at.iter().map(n).collect(),
            after: after.iter().map(n).collect(),
            remaining: remaining.map(|r| n(&r)),
            error_codes: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn default_statuses_are_5xx_and_429_plus_retry_on() {
        let h = RetryHints::default();
        let p = Policy {
            retries: 1,
            retry_on: &[404],
            hints: &h,
        };
        for s in [429, 500, 502, 503, 599, 404] {
            assert!(status_retries(s, &p), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 409, 428] {
            assert!(!status_retries(s, &p), "{s}");
        }
    }

    #[test]
    fn provider_error_codes_replace_the_defaults_and_retry_on_adds() {
        let h = RetryHints {
            error_codes: Some(vec![(403, 403), (500, 502)]),
            ..RetryHints::default()
        };
        let p = Policy {
            retries: 1,
            retry_on: &[409],
            hints: &h,
        };
        for s in [403, 500, 501, 502, 409] {
            assert!(status_retries(s, &p), "{s}");
        }
        for s in [429, 503, 504, 404] {
            assert!(!status_retries(s, &p), "{s}");
        }
    }

    #[test]
    fn spent_quota_retries_only_a_non_2xx_response() {
        let h = hints(&[], &[], Some("x-left"));
        let p = Policy {
            retries: 1,
            retry_on: &[],
            hints: &h,
        };
        let spent = headers(&[("x-left", " 0 ")]);
        assert!(response_retries(StatusCode::FORBIDDEN, &spent, &p));
        assert!(!response_retries(StatusCode::OK, &spent, &p));
        assert!(!response_retries(
            StatusCode::FORBIDDEN,
            &headers(&[("x-left", "3")]),
            &p
        ));
        assert!(!response_retries(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            &p
        ));
    }

    #[test]
    fn wait_values_in_every_form() {
        let now = at(NOW);
        let v = |s: &str| HeaderValue::from_str(s).expect("value");
        assert_eq!(parse_wait(&v("3"), now), Some(Duration::from_secs(3)));
        assert_eq!(parse_wait(&v("0.5"), now), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_wait(&v(&(NOW + 7).to_string()), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_wait(&v(&((NOW * 1000) + 1500).to_string()), now),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(at(NOW + 20));
        assert_eq!(parse_wait(&v(&date), now), Some(Duration::from_secs(20)));
        // A reset time already past asks for no wait.
        assert_eq!(
            parse_wait(&v(&(NOW - 50).to_string()), now),
            Some(Duration::ZERO)
        );
        let past = httpdate::fmt_http_date(at(NOW - 5));
        assert_eq!(parse_wait(&v(&past), now), Some(Duration::ZERO));
        for bad in ["", "soon", "-1", "NaN", "inf", "1e400"] {
            assert_eq!(parse_wait(&v(bad), now), None, "{bad}");
        }
    }

    #[test]
    fn the_longest_ask_wins() {
        let h = hints(&["x-reset"], &["x-wait"], None);
        let now = at(NOW);
        let res = headers(&[
            ("retry-after", "2"),
            ("x-reset", &(NOW + 9).to_string()),
            ("x-wait", "4"),
        ]);
        assert_eq!(asked_wait(&res, &h, now), Some(Duration::from_secs(9)));
        let res = headers(&[("retry-after", "12"), ("x-wait", "4")]);
        assert_eq!(asked_wait(&res, &h, now), Some(Duration::from_secs(12)));
        assert_eq!(asked_wait(&HeaderMap::new(), &h, now), None);
        // Unparseable values are ignored, not fatal.
        let res = headers(&[("retry-after", "later"), ("x-wait", "1")]);
        assert_eq!(asked_wait(&res, &h, now), Some(Duration::from_secs(1)));
    }

    #[test]
    fn provider_hints_are_ignored_while_quota_is_left() {
        let h = hints(&["x-reset"], &[], Some("x-left"));
        let now = at(NOW);
        let reset = (NOW + 900).to_string();
        let left = headers(&[("x-reset", &reset), ("x-left", "12")]);
        assert_eq!(asked_wait(&left, &h, now), None);
        let spent = headers(&[("x-reset", &reset), ("x-left", "0")]);
        assert_eq!(asked_wait(&spent, &h, now), Some(Duration::from_secs(900)));
        let unknown = headers(&[("x-reset", &reset)]);
        assert_eq!(
            asked_wait(&unknown, &h, now),
            Some(Duration::from_secs(900))
        );
        let with_std = headers(&[("x-reset", &reset), ("x-left", "12"), ("retry-after", "1")]);
        assert_eq!(asked_wait(&with_std, &h, now), Some(Duration::from_secs(1)));
    }

    #[test]
    fn plan_returns_at_once_when_the_ask_is_too_long() {
        let max = Duration::from_secs(30);
        let b = Duration::from_millis(100);
        assert_eq!(plan(None, b, max), Plan::Wait(b));
        assert_eq!(
            plan(Some(Duration::from_secs(30)), b, max),
            Plan::Wait(Duration::from_secs(30))
        );
        assert_eq!(
            plan(Some(Duration::from_secs(31)), b, max),
            Plan::TooLong(Duration::from_secs(31))
        );
        assert_eq!(
            plan(Some(Duration::ZERO), b, max),
            Plan::Wait(Duration::ZERO)
        );
    }

    #[test]
    fn backoff_grows_then_caps() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(5);
        assert_eq!(backoff(0, base, cap, 1.0), base);
        assert_eq!(backoff(1, base, cap, 1.0), base * 2);
        assert_eq!(backoff(3, base, cap, 1.0), base * 8);
        assert_eq!(backoff(5, base, cap, 1.0), cap);
        assert_eq!(backoff(40, base, cap, 1.0), cap);
        assert_eq!(backoff(2, base, cap, 0.0), Duration::ZERO);
        assert_eq!(backoff(2, base, cap, 0.5), base * 2);
    }

    proptest! {
        #[test]
        fn backoff_stays_within_its_ceiling(
            retry in 0u32..100,
            base_ms in 0u64..10_000,
            cap_ms in 0u64..100_000,
            unit in 0.0f64..1.0,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms);
            let d = backoff(retry, base, cap, unit);
            prop_assert!(d <= cap);
            if retry < 20 {
                prop_assert!(d <= base * (1u32 << retry));
            }
        }

        #[test]
        fn parse_wait_never_panics(s in "\\PC{0,40}") {
            if let Ok(v) = HeaderValue::from_str(&s) {
                let _ = parse_wait(&v, at(NOW));
            }
        }

        #[test]
        fn numeric_waits_are_never_longer_than_asked(secs in 0u64..1_000_000) {
            let v = HeaderValue::from_str(&secs.to_string()).expect("value");
            prop_assert_eq!(parse_wait(&v, at(NOW)), Some(Duration::from_secs(secs)));
        }

        #[test]
        fn status_rules_hold_for_every_status(status in 100u16..600, extra in 100u16..600) {
            let h = RetryHints::default();
            let p = Policy { retries: 1, retry_on: &[extra], hints: &h };
            let expected = status == extra || status == 429 || status >= 500;
            prop_assert_eq!(status_retries(status, &p), expected);
        }
    }
}
