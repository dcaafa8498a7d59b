//! Which of sidekey's routes a request path names.
//!
//! Two proxy forms exist: Nango's `/proxy/{endpoint}` (the connection named by headers) and
//! integration.app's `/connections/{selector}/proxy/{endpoint}`. The endpoint is returned as the
//! raw bytes of the path after the prefix, never decoded, so the upstream sees it byte for byte.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// A matched proxy route.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/proxy{endpoint}`; the endpoint is empty or starts with `/`.
    Proxy { endpoint: &'a str },
    /// `/connections/{selector}/proxy{endpoint}`; the selector is percent-decoded.
    ConnectionProxy {
        selector: Cow<'a, str>,
        endpoint: &'a str,
    },
}

/// Matches `path` (without the query) against the proxy routes.
pub fn route(path: &str) -> Option<Route<'_>> {
    if let Some(endpoint) = strip_segment_prefix(path, "/proxy") {
        return Some(Route::Proxy { endpoint });
    }
    let rest = path.strip_prefix("/connections/")?;
    let (selector, rest) = rest.split_once('/')?;
    let endpoint = strip_segment_prefix(&format!("/{rest}"), "/proxy").map(|e| e.len())?;
    if selector.is_empty() {
        return None;
    }
    let selector = percent_decode_str(selector).decode_utf8().ok()?;
    Some(Route::ConnectionProxy {
        selector,
        endpoint: &path[path.len() - endpoint..],
    })
}

/// `path` without `prefix` when the prefix ends at a segment boundary.
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nango_form() {
        assert_eq!(
            route("/proxy/v3/contacts"),
            Some(Route::Proxy {
                endpoint: "/v3/contacts"
            })
        );
        assert_eq!(route("/proxy"), Some(Route::Proxy { endpoint: "" }));
        assert_eq!(route("/proxy/"), Some(Route::Proxy { endpoint: "/" }));
        assert_eq!(route("/proxyx"), None);
        assert_eq!(route("/prox"), None);
    }

    #[test]
    fn integration_app_form() {
        assert_eq!(
            route("/connections/user%201/proxy/crm/v3/owners/"),
            Some(Route::ConnectionProxy {
                selector: Cow::Borrowed("user 1"),
                endpoint: "/crm/v3/owners/"
            })
        );
        assert_eq!(
            route("/connections/c/proxy/https://api.example.com/x"),
            Some(Route::ConnectionProxy {
                selector: Cow::Borrowed("c"),
                endpoint: "/https://api.example.com/x"
            })
        );
        assert_eq!(route("/connections/c/proxyx"), None);
        assert_eq!(route("/connections//proxy/x"), None);
        assert_eq!(route("/connections/c"), None);
    }
}
