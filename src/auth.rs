//! Caller authentication: `Authorization: Bearer <secret key>` against the snapshot's digests.
//!
//! Keys are stored only as SHA-256 digests. The presented key is hashed once and compared with
//! every digest in constant time, without stopping at the first match, so timing says nothing
//! about which key (or how much of one) matched.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ProxyError;

/// The SHA-256 digest of a key's UTF-8 bytes.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Checks the caller's `Authorization` header against `keys`.
pub fn authenticate(headers: &HeaderMap, keys: &[[u8; 32]]) -> Result<(), ProxyError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(ProxyError::MissingAuthHeader)?;
    let token = bearer_token(value.as_bytes()).ok_or(ProxyError::MalformedAuthHeader)?;
    let presented: [u8; 32] = Sha256::digest(token).into();
    let mut found = subtle::Choice::from(0);
    for k in keys {
        found |= k.ct_eq(&presented);
    }
    if bool::from(found) {
        Ok(())
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
    use http::HeaderValue;

    fn check(value: Option<&str>, keys: &[[u8; 32]]) -> Result<(), &'static str> {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("valid"),
            );
        }
        authenticate(&h, keys).map_err(|e| e.code())
    }

    #[test]
    fn error_codes() {
        let keys = [digest("k1"), digest("k2")];
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
    fn new_keys_differ() {
        assert_ne!(new_key(), new_key());
        assert!(new_key().len() > 40);
    }
}
