//! Caller authentication: `Authorization: Bearer <secret key>` against the snapshot's digests.
//!
//! Keys are stored only as SHA-256 digests. The presented key is hashed once and compared with
//! every digest in constant time, without stopping at the first match, so timing says nothing
//! about which key (or how much of one) matched. A key carries [`Scopes`]: what the routes
//! it may call are allowed to do (the router checks them per route).

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ProxyError;

/// One thing a caller key may do. Names follow Nango's `environment:<name>` scopes where Nango
/// has them; the `environment:` prefix is accepted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Scope {
    Proxy = 1,
    ConnectionsRead = 1 << 1,
    ConnectionsWrite = 1 << 2,
    ConnectionsReadCredentials = 1 << 3,
    IntegrationsRead = 1 << 4,
    IntegrationsWrite = 1 << 5,
    ConnectSessionsWrite = 1 << 6,
}

impl Scope {
    const ALL: [Scope; 7] = [
        Scope::Proxy,
        Scope::ConnectionsRead,
        Scope::ConnectionsWrite,
        Scope::ConnectionsReadCredentials,
        Scope::IntegrationsRead,
        Scope::IntegrationsWrite,
        Scope::ConnectSessionsWrite,
    ];

    /// Every scope's name, in the order above.
    pub const NAMES: [&'static str; 7] = [
        "proxy",
        "connections:read",
        "connections:write",
        "connections:read_credentials",
        "integrations:read",
        "integrations:write",
        "connect_sessions:write",
    ];

    pub fn name(self) -> &'static str {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::NAMES[i]
    }

    fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        let name = name.strip_prefix("environment:").unwrap_or(name);
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }
}

/// A set of [`Scope`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    /// What the first-run key and `SIDEKEY_SECRET_KEY` keys get: the secret key is full access.
    pub const ALL: Scopes = Scopes((1 << 7) - 1);

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s as u16 != 0
    }

    /// Parses scope names; `*` or `environment:*` is every scope. The error names the first
    /// unknown one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownScope> {
        let mut set = 0u16;
        for n in names {
            let n = n.as_ref();
            if matches!(n.trim(), "*" | "environment:*") {
                return Ok(Self::ALL);
            }
            set |= Scope::from_name(n).ok_or_else(|| UnknownScope(n.to_string()))? as u16;
        }
        Ok(Self(set))
    }

    /// The names in this set.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.name())
            .collect()
    }
}

/// A scope name sidekey does not know; Display is the name alone (callers say what it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownScope(pub String);

/// The SHA-256 digest of a key's UTF-8 bytes.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A caller key as [`authenticate`] sees it: a digest and what it may do. The snapshot's
/// `config::CallerKey` implements it (in `config`), so this module does not depend on the
/// configuration that depends on its [`Scopes`].
pub trait Key {
    fn digest(&self) -> &[u8; 32];
    fn scopes(&self) -> Scopes;
}

/// Checks the caller's `Authorization` header against `keys`; the matching key's scopes.
pub fn authenticate<K: Key>(headers: &HeaderMap, keys: &[K]) -> Result<Scopes, ProxyError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(ProxyError::MissingAuthHeader)?;
    let token = bearer_token(value.as_bytes()).ok_or(ProxyError::MalformedAuthHeader)?;
    let presented: [u8; 32] = Sha256::digest(token).into();
    let mut found = subtle::Choice::from(0);
    let mut scopes = 0u16;
    for k in keys {
        let hit = k.digest().ct_eq(&presented);
        found |= hit;
        // Branch-free: a key's scopes are or-ed in only when it matched.
        scopes |= k.scopes().0 & 0u16.wrapping_sub(u16::from(hit.unwrap_u8()));
    }
    if bool::from(found) {
        Ok(Scopes(scopes))
    } else {
        Err(ProxyError::UnknownAccount)
    }
}

/// The token of a `Bearer <token>` value (scheme case-insensitive); `None` when malformed or
/// empty.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    if token.is_empty() || token.contains(&b' ') {
        return None;
    }
    Some(token)
}

/// A new random caller key: 32 random bytes, URL-safe base64, with a recognisable prefix.
pub fn new_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CallerKey;
    use http::HeaderValue;

    fn keys(names: &[&str]) -> Vec<CallerKey> {
        names
            .iter()
            .map(|n| CallerKey {
                digest: digest(n),
                scopes: Scopes::ALL,
                from_env: true,
                record: None,
            })
            .collect()
    }

    fn check(value: Option<&str>, keys: &[CallerKey]) -> Result<(), &'static str> {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("valid"),
            );
        }
        authenticate(&h, keys).map(|_| ()).map_err(|e| e.code())
    }

    #[test]
    fn error_codes() {
        let keys = keys(&["k1", "k2"]);
        assert_eq!(check(None, &keys), Err("missing_auth_header"));
        assert_eq!(
            check(Some("Basic abc"), &keys),
            Err("malformed_auth_header")
        );
        assert_eq!(check(Some("Bearer "), &keys), Err("malformed_auth_header"));
        assert_eq!(check(Some("Bearer"), &keys), Err("malformed_auth_header"));
        assert_eq!(check(Some("Bearerk1"), &keys), Err("malformed_auth_header"));
        assert_eq!(check(Some("Bearer nope"), &keys), Err("unknown_account"));
        assert_eq!(check(Some("Bearer k2"), &keys), Ok(()));
        assert_eq!(check(Some("bEARER k1"), &keys), Ok(()));
        assert_eq!(check(Some("Bearer k1"), &[]), Err("unknown_account"));
    }

    #[test]
    fn scopes_of_the_matching_key() {
        let mut ks = keys(&["full"]);
        ks.push(CallerKey {
            digest: digest("app"),
            scopes: Scopes::parse(&["proxy"]).expect("known"),
            from_env: false,
            record: None,
        });
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app"),
        );
        let s = authenticate(&h, &ks).expect("known key");
        assert!(s.contains(Scope::Proxy));
        assert!(!s.contains(Scope::ConnectionsRead));
        assert_eq!(s.names(), ["proxy"]);
        assert_eq!(
            Scopes::parse(&["environment:connections:read", "integrations:write"])
                .expect("known")
                .names(),
            ["connections:read", "integrations:write"]
        );
        assert_eq!(
            Scopes::parse(&["nope"]),
            Err(UnknownScope("nope".to_string()))
        );
        assert_eq!(Scopes::parse(&["environment:*"]), Ok(Scopes::ALL));
    }

    #[test]
    fn new_keys_differ() {
        assert_ne!(new_key(), new_key());
        assert!(new_key().len() > 40);
    }
}
