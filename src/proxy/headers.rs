//! Which headers cross the proxy, in each direction.
//!
//! To the upstream: everything the caller sent except hop-by-hop headers (and the ones the
//! `Connection` header names), the infrastructure headers of integration.app's list, the
//! caller's own `Authorization`, and sidekey's control headers. `Nango-Proxy-X: v` is sent as
//! `X: v` after the same drop list is applied to `X`, and replaces a plain `X`. To the caller:
//! everything the upstream sent except hop-by-hop headers, and Content-Length when the
//! upstream's message was framed by Transfer-Encoding.
//!
//! The drop decision is a `match` on the lowercase name: no allocation, no set lookup.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING,
};

/// sidekey's control headers: read by sidekey, never forwarded.
pub fn is_control(name: &str) -> bool {
    matches!(
        name,
        "connection-id"
            | "provider-config-key"
            | "retries"
            | "retry-on"
            | "base-url-override"
            | "decompress"
            | "nango-activity-log-id"
    ) || name.starts_with("nango-is-")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their common legacy forms.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

/// Infrastructure headers that describe the caller's hop, plus the caller's `Authorization`.
fn is_infrastructure(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "x-request-id"
            | "x-real-ip"
            | "x-scheme"
            | "x-original-forwarded-for"
            | "x-different-name"
            | "x-request-start"
            | "x-using-nginx-controller"
            | "x-amzn-trace-id"
            | "forwarded-for-header"
            | "proxy-protocol"
            | "real_ip_header"
            | "real_ip_recursive"
            | "cdn-loop"
            | "forwarded"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("cf-")
}

/// Whether a header (named as it would reach the upstream) must not be forwarded.
fn is_dropped(name: &str) -> bool {
    is_hop_by_hop(name) || is_infrastructure(name) || is_control(name)
}

/// Whether `name` is listed in the message's `Connection` header.
fn named_by_connection(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name))
        })
    })
}

/// Copies the caller's headers that may reach the upstream into `out`.
pub fn request_headers(caller: &HeaderMap, out: &mut HeaderMap) {
    let has_connection = caller.contains_key(CONNECTION);
    let mut prefixed: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (name, value) in caller {
        let n = name.as_str();
        if let Some(inner) = n.strip_prefix("nango-proxy-") {
            // The body's framing is the caller's own Content-Length, never a prefixed one.
            if !is_dropped(inner) && inner != "content-length" {
                if let Ok(h) = HeaderName::from_bytes(inner.as_bytes()) {
                    prefixed.push((h, value.clone()));
                }
            }
            continue;
        }
        if is_dropped(n) || (has_connection && named_by_connection(caller, n)) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    for (name, _) in &prefixed {
        out.remove(name);
    }
    for (name, value) in prefixed {
        out.append(name, value);
    }
}

/// Removes hop-by-hop headers from an upstream response, in place. Most responses carry none,
/// so one pass over the names decides whether anything needs removing at all.
///
/// Framing: the body reaches the caller de-chunked and framed again by sidekey's own server,
/// by Content-Length when there is one. An upstream message with Transfer-Encoding is framed
/// by that (RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary
/// must drop the latter), so its Content-Length is not the body's length and must not pass:
/// a caller would read that many bytes and take the rest for the next response.
pub fn response_headers(headers: &mut HeaderMap) {
    // `Sidekey-Error` marks sidekey's own answers; an upstream may not forge it.
    headers.remove("sidekey-error");
    if !headers.keys().any(|n| is_hop_by_hop(n.as_str())) {
        return;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    let mut named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    named.extend(
        headers
            .keys()
            .filter(|n| is_hop_by_hop(n.as_str()))
            .cloned(),
    );
    for n in named {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn request_filtering() {
        let caller = map(&[
            ("authorization", "Bearer caller-secret"),
            ("host", "sidekey"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-forwarded-for", "1.2.3.4"),
            ("cf-ray", "abc"),
            ("connection-id", "c"),
            ("provider-config-key", "p"),
            ("nango-is-sync", "true"),
            ("retries", "3"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("x-empty", ""),
            ("accept", "a"),
            ("accept", "b"),
            ("x-custom", "plain"),
            ("nango-proxy-x-custom", "prefixed"),
            ("nango-proxy-host", "evil"),
            ("nango-proxy-authorization", "Bearer sneaky"),
            ("nango-proxy-transfer-encoding", "chunked"),
            ("nango-proxy-content-length", "999"),
            ("nango-proxy-connection", "close"),
        ]);
        let mut out = HeaderMap::new();
        request_headers(&caller, &mut out);
        let mut names: Vec<_> = out.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept",
                "content-length",
                "content-type",
                "x-custom",
                "x-empty"
            ]
        );
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert_eq!(out["x-custom"], "prefixed");
    }

    #[test]
    fn response_filtering() {
        let mut h = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x-ratelimit-remaining", "4"),
            ("sidekey-error", "forged"),
        ]);
        response_headers(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-ratelimit-remaining"]);
    }

    #[test]
    fn content_length_goes_only_with_transfer_encoding() {
        // Chunked (or any transfer coding): the length is not the body's, it goes.
        for te in ["chunked", "gzip, chunked", "identity"] {
            let mut h = map(&[("content-length", "5"), ("transfer-encoding", te)]);
            response_headers(&mut h);
            assert!(h.is_empty(), "{te}: {h:?}");
        }
        // A plain length passes, as does a length beside other hop-by-hop headers.
        let mut h = map(&[("content-length", "5")]);
        response_headers(&mut h);
        assert_eq!(h["content-length"], "5");
        let mut h = map(&[("content-length", "5"), ("keep-alive", "timeout=5")]);
        response_headers(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-length"]
        );
        // Every framing and connection-scoped header the relay could copy is dropped.
        let mut h = map(&[
            ("connection", "x-a, x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("trailer", "x-sum"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-kept", "3"),
        ]);
        response_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }
}
