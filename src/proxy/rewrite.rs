//! The upstream URL: the base URL joined with the caller's endpoint and query.
//!
//! Rules: exactly one slash between the base path and the endpoint; the base path, a trailing
//! slash and the raw query are kept byte for byte (never decoded and re-encoded, so `%2F`
//! stays); injected query pairs are appended and replace a caller parameter of the same name;
//! dot segments, plain or percent-encoded, may never climb above the base path.

use http::uri::{PathAndQuery, Uri};

use crate::config::BaseUrl;
use crate::error::ProxyError;

/// Checks that no `.`/`..` segment of `endpoint` climbs above its root. Segments are compared
/// percent-decoded, and a decoded segment is split again on `/` and `\`, since some servers
/// decode `%2F` before routing.
pub fn check_dot_segments(endpoint: &str) -> Result<(), ProxyError> {
    // A dot segment needs a `.`, or a `%` when encoded: an endpoint with neither (the common
    // case) is fine without decoding anything.
    if !endpoint.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(());
    }
    let mut depth: i64 = 0;
    for raw in endpoint.split('/') {
        let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
        for part in decoded.split(|b| *b == b'/' || *b == b'\\') {
            match part {
                b"" | b"." => {}
                b".." => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(ProxyError::InvalidEndpoint(
                            "the endpoint climbs above the base URL with `..`".into(),
                        ));
                    }
                }
                _ => depth += 1,
            }
        }
    }
    Ok(())
}

/// A full `https://host/...` endpoint (integration.app form), split into its parts.
pub struct AbsoluteEndpoint<'a> {
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
}

/// Recognises an endpoint that is a full URL: `/https://host/path` (or `https:/host/path`, as
/// some clients collapse the double slash).
pub fn absolute_endpoint(endpoint: &str) -> Option<AbsoluteEndpoint<'_>> {
    let e = endpoint.trim_start_matches('/');
    let (scheme, rest) = e.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = rest.strip_prefix("//").or_else(|| rest.strip_prefix('/'))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Some(AbsoluteEndpoint {
        scheme,
        authority,
        path,
    })
}

/// Builds the upstream URI from the base, the endpoint (raw path after the route prefix), the
/// caller's raw query and the injected, already-encoded query pairs.
pub fn upstream_uri(
    base: &BaseUrl,
    endpoint: &str,
    caller_query: Option<&str>,
    injected: &[(&str, &str)],
) -> Result<Uri, ProxyError> {
    check_dot_segments(endpoint)?;
    if endpoint.bytes().any(|b| b == b'#') {
        return Err(ProxyError::InvalidEndpoint(
            "the endpoint contains `#`".into(),
        ));
    }
    let tail = endpoint.trim_start_matches('/');
    let mut pq = String::with_capacity(base.path.len() + endpoint.len() + 64);
    pq.push_str(&base.path);
    pq.push('/');
    pq.push_str(tail);
    let mut first = true;
    let mut push_param = |pq: &mut String, param: &str| {
        pq.push(if first { '?' } else { '&' });
        first = false;
        pq.push_str(param);
    };
    for q in [base.query.as_deref(), caller_query].into_iter().flatten() {
        if injected.is_empty() {
            // Nothing to replace: the query passes byte for byte, empty segments included.
            push_param(&mut pq, q);
            continue;
        }
        for param in q.split('&') {
            let name = param.split_once('=').map_or(param, |(n, _)| n);
            if !param.is_empty() && injected.iter().any(|(n, _)| *n == name) {
                continue;
            }
            push_param(&mut pq, param);
        }
    }
    for (name, value) in injected {
        pq.push(if first { '?' } else { '&' });
        first = false;
        pq.push_str(name);
        pq.push('=');
        pq.push_str(value);
    }
    let path_and_query = PathAndQuery::from_maybe_shared(pq)
        .map_err(|_| ProxyError::InvalidEndpoint("the endpoint is not a valid URL path".into()))?;
    Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::InvalidEndpoint("the endpoint is not a valid URL path".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base(s: &str) -> BaseUrl {
        BaseUrl::parse(s).expect("base parses")
    }

    fn join(b: &str, e: &str, q: Option<&str>) -> Result<String, &'static str> {
        upstream_uri(&base(b), e, q, &[])
            .map(|u| u.to_string())
            .map_err(|e| e.code())
    }

    #[test]
    fn joins_with_exactly_one_slash() {
        let hub = "https://api.hubapi.com/crm";
        assert_eq!(
            join(hub, "/v3/contacts", None),
            Ok("https://api.hubapi.com/crm/v3/contacts".into())
        );
        assert_eq!(
            join("https://api.hubapi.com/crm/", "//v3/", None),
            Ok("https://api.hubapi.com/crm/v3/".into())
        );
        assert_eq!(
            join("https://api.github.com", "/repos", None),
            Ok("https://api.github.com/repos".into())
        );
        assert_eq!(
            join("https://api.github.com", "", None),
            Ok("https://api.github.com/".into())
        );
    }

    #[test]
    fn query_and_encoding_pass_byte_for_byte() {
        assert_eq!(
            join("https://h/base", "/a%2Fb/c%20d", Some("x=%2F&y=a+b&&z")),
            Ok("https://h/base/a%2Fb/c%20d?x=%2F&y=a+b&&z".into())
        );
    }

    #[test]
    fn injected_query_replaces_caller_parameter() {
        let u = upstream_uri(
            &base("https://h/?v=1"),
            "/x",
            Some("api_key=mine&a=1&api_key"),
            &[("api_key", "k%20")],
        )
        .expect("builds");
        assert_eq!(u.to_string(), "https://h/x?v=1&a=1&api_key=k%20");
    }

    #[test]
    fn dot_segments_never_climb() {
        for bad in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E./x",
            "/a/..%2f..%2fx",
            "/a%2f..%2f..",
            "/..%5cx",
        ] {
            assert_eq!(
                join("https://h/base", bad, None),
                Err("invalid_endpoint"),
                "{bad}"
            );
        }
        for ok in ["/a/../b", "/./a", "/a/./b/..", "/...", "/..a"] {
            assert!(join("https://h/base", ok, None).is_ok(), "{ok}");
        }
    }

    #[test]
    fn absolute_endpoints() {
        let a = absolute_endpoint("/https://api.hubapi.com/crm/v3").expect("absolute");
        assert_eq!(
            (a.scheme, a.authority, a.path),
            ("https", "api.hubapi.com", "/crm/v3")
        );
        let a = absolute_endpoint("/https:/api.hubapi.com").expect("collapsed");
        assert_eq!((a.authority, a.path), ("api.hubapi.com", ""));
        assert!(absolute_endpoint("/v3/contacts").is_none());
        assert!(absolute_endpoint("/ftp://x/y").is_none());
    }

    proptest! {
        /// Invariant: joining never panics, and a joined path always starts with the base path.
        #[test]
        fn never_escapes_the_base(endpoint in "(/[a-z.%2eE5cCfF]{0,6}){0,6}", query in proptest::option::of("[a-z=&%]{0,12}")) {
            if let Ok(uri) = upstream_uri(&base("https://h/base"), &endpoint, query.as_deref(), &[]) {
                prop_assert!(uri.path().starts_with("/base/"));
            }
        }
    }
}
