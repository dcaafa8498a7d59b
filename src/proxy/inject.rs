//! Credential injection: the connection's precompiled headers and query pairs, plus the few
//! templates that need the current OAuth access token.
//!
//! Injected headers replace anything the caller sent under the same name: the credential always
//! wins. Values are marked sensitive so that hyper's HPACK never indexes them and debug output
//! hides them.

use http::{HeaderMap, HeaderValue};

use crate::config::{Connection, Placement};
use crate::error::ProxyError;

/// Query pairs rendered per request from access-token templates (owned, percent-encoded).
pub type DynamicQuery = Vec<(std::sync::Arc<str>, String)>;

/// Inserts the connection's credential headers into `headers` and returns the query pairs
/// that depend on the access token.
pub fn inject(
    conn: &Connection,
    access_token: Option<&str>,
    headers: &mut HeaderMap,
) -> Result<DynamicQuery, ProxyError> {
    for (name, value) in &conn.static_headers {
        headers.insert(name.clone(), value.clone());
    }
    let mut query = Vec::new();
    if conn.dynamic().is_empty() {
        return Ok(query);
    }
    let values = conn.values(access_token);
    for inj in conn.dynamic().iter() {
        let Some(rendered) = inj.template.render(&values) else {
            continue;
        };
        match &inj.placement {
            Placement::Header(name) => {
                let mut v = HeaderValue::from_str(&rendered).map_err(|_| {
                    ProxyError::Internal(format!(
                        "the access token cannot be sent in header `{name}`"
                    ))
                })?;
                v.set_sensitive(true);
                headers.insert(name.clone(), v);
            }
            Placement::Query(name) => query.push((
                name.clone(),
                crate::config::snapshot::encode_query_component(&rendered),
            )),
        }
    }
    Ok(query)
}
