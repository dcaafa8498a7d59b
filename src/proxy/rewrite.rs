//! The upstream URL: the base URL joined with the caller's endpoint and query.
//!
//! Rules: exactly one slash between the base path and the endpoint; the base path, a trailing
//! slash and the raw query are kept byte for byte (never decoded and re-encoded, so `%2F`
//! stays); injected query pairs are appended and replace a caller parameter of the same name;
//! dot segments, plain or percent-encoded, may never climb above the base path.
//!
//! The dot-segment rule, as defence in depth for upstreams that read paths loosely: the
//! endpoint is read as it is and after each of up to three rounds of percent-decoding (some
//! frameworks decode twice: `%252e` is `%2e`, then `.`). At every round segments are split at
//! `/` and at `\` (Windows servers), a segment's `;parameters` are ignored (Tomcat and other
//! servlet containers read `..;x` as `..`), and walking the segments, `..` may never go above
//! the start; `.` and empty segments stay where they are. An endpoint that still decodes
//! after three rounds is refused outright. Refused endpoints get 400 `invalid_endpoint`;
//! nothing is ever rewritten, what passes is forwarded byte for byte. The check runs only
//! when the endpoint holds a `.` or `%`, and allocates nothing.

use http::uri::{PathAndQuery, Uri};

use crate::config::BaseUrl;
use crate::error::ProxyError;

/// Rounds of percent-decoding under which dot segments are checked.
const ROUNDS: usize = 3;

/// The endpoint's bytes after `level` rounds of percent-decoding, produced one at a time (no
/// buffer: each round keeps at most two bytes it has read ahead).
struct Decoded<'a> {
    raw: &'a [u8],
    pos: usize,
    /// Per round: bytes read ahead and given back, to be read again first.
    back: [[u8; 2]; ROUNDS + 1],
    back_len: [u8; ROUNDS + 1],
    /// Per round: whether it decoded at least one escape.
    decoded: [bool; ROUNDS + 1],
}

impl<'a> Decoded<'a> {
    fn new(raw: &'a str) -> Self {
        Self {
            raw: raw.as_bytes(),
            pos: 0,
            back: [[0; 2]; ROUNDS + 1],
            back_len: [0; ROUNDS + 1],
            decoded: [false; ROUNDS + 1],
        }
    }

    /// The next input byte of round `round` (1-based): the output of the round below.
    fn input(&mut self, round: usize) -> Option<u8> {
        let i = round - 1;
        match self.back_len[i] {
            0 => self.next(round - 1),
            n => {
                let b = self.back[i][0];
                self.back[i][0] = self.back[i][1];
                self.back_len[i] = n - 1;
                Some(b)
            }
        }
    }

    /// Gives bytes back to round `round`. Only ever called when its read-ahead is empty (a
    /// round reads at most the two bytes after a `%`, and gives back only those).
    fn give_back(&mut self, round: usize, bytes: &[u8]) {
        let i = round - 1;
        let n = bytes.len().min(2);
        self.back[i][..n].copy_from_slice(&bytes[..n]);
        self.back_len[i] = n as u8;
    }

    /// The next byte after `level` rounds of decoding.
    fn next(&mut self, level: usize) -> Option<u8> {
        if level == 0 {
            let b = self.raw.get(self.pos).copied();
            self.pos += 1;
            return b;
        }
        let b = self.input(level)?;
        if b != b'%' {
            return Some(b);
        }
        let Some(h1) = self.input(level) else {
            return Some(b'%');
        };
        let Some(d1) = hex(h1) else {
            self.give_back(level, &[h1]);
            return Some(b'%');
        };
        let Some(h2) = self.input(level) else {
            self.give_back(level, &[h1]);
            return Some(b'%');
        };
        let Some(d2) = hex(h2) else {
            self.give_back(level, &[h1, h2]);
            return Some(b'%');
        };
        self.decoded[level - 1] = true;
        Some(d1 << 4 | d2)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Walks the endpoint after `level` rounds of decoding: false when a `..` climbs above the
/// start. Also says whether round `level` decoded anything (else it read what the round
/// before it did).
fn stays_inside(endpoint: &str, level: usize) -> (bool, bool) {
    let mut d = Decoded::new(endpoint);
    let mut depth: i64 = 0;
    // The current segment: how many leading dots, whether anything else came before its
    // `;parameters`, and whether those have started.
    let (mut dots, mut other, mut params) = (0u8, false, false);
    loop {
        let b = d.next(level);
        match b {
            None | Some(b'/') | Some(b'\\') => {
                if other {
                    depth += 1;
                } else if dots == 2 {
                    depth -= 1;
                    if depth < 0 {
                        return (false, false);
                    }
                }
                (dots, other, params) = (0, false, false);
                if b.is_none() {
                    break;
                }
            }
            Some(_) if params => {}
            Some(b';') => params = true,
            Some(b'.') if !other && dots < 2 => dots += 1,
            Some(_) => other = true,
        }
    }
    (true, level > 0 && d.decoded[level - 1])
}

/// Checks that no `.`/`..` segment of `endpoint` climbs above its root, under the rule in the
/// module docs: as sent and after each of up to three rounds of percent-decoding, segments
/// split at `/` and `\`, `;parameters` ignored.
pub fn check_dot_segments(endpoint: &str) -> Result<(), ProxyError> {
    // A dot segment needs a `.`, or a `%` when encoded: an endpoint with neither (the common
    // case) is fine without decoding anything.
    let encoded = endpoint.contains('%');
    if !encoded && !endpoint.contains('.') {
        return Ok(());
    }
    let climbs = || {
        ProxyError::InvalidEndpoint(
            "the endpoint climbs above the base URL with `..` (plain, percent-encoded or with `;parameters`)".into(),
        )
    };
    for level in 0..=ROUNDS {
        let (inside, changed) = stays_inside(endpoint, level);
        if !inside {
            return Err(climbs());
        }
        // Without a `%`, every round reads the same bytes; and once a round decodes nothing,
        // neither does any after it.
        if !encoded || (level > 0 && !changed) {
            return Ok(());
        }
    }
    // Three rounds decoded something each: does a fourth still find an escape?
    if still_encoded(endpoint) {
        return Err(ProxyError::InvalidEndpoint(
            "the endpoint is percent-encoded more than three times over".into(),
        ));
    }
    Ok(())
}

/// Whether the endpoint after three rounds of decoding still holds a `%XY` escape.
fn still_encoded(endpoint: &str) -> bool {
    let mut d = Decoded::new(endpoint);
    // Hex digits seen since the last `%` (0 when none is open).
    let mut open: Option<u8> = None;
    while let Some(b) = d.next(ROUNDS) {
        open = match (open, b) {
            (_, b'%') => Some(0),
            (Some(0), h) if hex(h).is_some() => Some(1),
            (Some(1), h) if hex(h).is_some() => return true,
            _ => None,
        };
    }
    false
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
    let mut pq = String::with_capacity(base.path().len() + endpoint.len() + 64);
    pq.push_str(base.path());
    pq.push('/');
    pq.push_str(tail);
    let mut first = true;
    let mut push_param = |pq: &mut String, param: &str| {
        pq.push(if first { '?' } else { '&' });
        first = false;
        pq.push_str(param);
    };
    for q in [base.query(), caller_query].into_iter().flatten() {
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
    fn loose_dot_segments_never_climb() {
        for bad in [
            // Path parameters: Tomcat reads `..;x` as `..`.
            "/..;/x",
            "/..;jsessionid=1/x",
            "/a/..;/..;/x",
            "/%2e%2e;/x",
            "/.;/..;",
            // Double and triple encoding.
            "/%252e%252e/x",
            "/%252E%252E%252Fx",
            "/a%252f..%252f..",
            "/%25252e%25252e/x",
            "/%%32%65%%32%65/x",
            // A raw `..` over a segment that only decoding would split (`a%2fb` is one
            // segment to a server that does not decode `%2F`).
            "/a%2fb/../..",
            "/a%252fb/../..",
            // Four rounds deep.
            "/%2525252e%2525252e/x",
            "/%2525252e",
        ] {
            assert_eq!(
                join("https://h/base", bad, None),
                Err("invalid_endpoint"),
                "{bad}"
            );
        }
        for ok in [
            "/a;v=1/b",
            "/a/..;/b",
            "/.;/a",
            "/;x/a",
            "/%252e/a",
            "/a%252e%252e",
            "/100%25/x",
            "/%zz/%2/%",
            "/a/b/%2e%2e;x",
            "/v1/files/report.v2;type=csv",
        ] {
            assert!(join("https://h/base", ok, None).is_ok(), "{ok}");
        }
    }

    proptest! {
        /// The streaming decoder reads exactly what decoding the whole string `level` times does.
        #[test]
        fn streaming_rounds_match_whole_string_decoding(raw in "[%25eEfF2a./;]{0,24}") {
            for level in 0..=ROUNDS {
                let mut d = Decoded::new(&raw);
                let streamed: Vec<u8> = std::iter::from_fn(|| d.next(level)).collect();
                let whole = (0..level).fold(raw.as_bytes().to_vec(), |b, _| {
                    percent_encoding::percent_decode(&b).collect::<Vec<u8>>()
                });
                prop_assert_eq!(streamed, whole, "{} at level {}", raw, level);
            }
        }
    }

    /// The reference reading of the rule, written the slow way: decode `rounds` times with
    /// the percent-encoding crate, split at `/` and `\\`, drop `;parameters`, walk.
    fn climbs_when_read_as(endpoint: &str, rounds: usize) -> bool {
        let mut bytes = endpoint.as_bytes().to_vec();
        for _ in 0..rounds {
            bytes = percent_encoding::percent_decode(&bytes).collect();
        }
        let mut depth = 0i64;
        for seg in bytes.split(|b| *b == b'/' || *b == b'\\') {
            let name = seg.split(|b| *b == b';').next().unwrap_or_default();
            match name {
                b"" | b"." => {}
                b".." => {
                    depth -= 1;
                    if depth < 0 {
                        return true;
                    }
                }
                _ => depth += 1,
            }
        }
        false
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

        /// Invariant: an endpoint that passes never climbs above the base however a server
        /// reads it: raw or decoded up to eight times, `\\` as `/`, `;parameters` dropped. And
        /// the check refuses only what some such reading climbs with (or what is encoded more
        /// than three times over).
        #[test]
        fn never_escapes_the_base_when_read_loosely(endpoint in "(/([a-z.;]|%(25){0,4}(2[eEfF]|5[cC]|3[bB])){0,6}){0,6}") {
            let passes = check_dot_segments(&endpoint).is_ok();
            if passes {
                for rounds in 0..=8 {
                    prop_assert!(!climbs_when_read_as(&endpoint, rounds), "{endpoint} read {rounds}x");
                }
            } else {
                let deep = percent_encoding::percent_decode(
                    &(0..3).fold(endpoint.as_bytes().to_vec(), |b, _| percent_encoding::percent_decode(&b).collect::<Vec<u8>>()),
                ).collect::<Vec<u8>>();
                let four_deep = deep != (0..3).fold(endpoint.as_bytes().to_vec(), |b, _| percent_encoding::percent_decode(&b).collect::<Vec<u8>>());
                prop_assert!(four_deep || (0..=3).any(|r| climbs_when_read_as(&endpoint, r)), "{endpoint} refused without reason");
            }
        }
    }
}
