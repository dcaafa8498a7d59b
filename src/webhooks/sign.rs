//! The two signatures Nango puts on a webhook.
//!
//! - `X-Nango-Hmac-Sha256`: lowercase hex of HMAC-SHA256 over the exact body, keyed by the
//!   signing key. This is what `@nangohq/node`'s `verifyIncomingWebhookRequest` checks.
//! - `X-Nango-Signature` (legacy): lowercase hex of plain SHA-256 over the signing key
//!   followed by the body. Open to length extension, kept because older receivers check it.
//!
//! HMAC comes from RustCrypto's `hmac` over the `sha2` the crate already hashes keys with: one
//! small crate on top of a digest already compiled in, and a generic `Mac` whose `new_from_slice`
//! takes a key of any length, as Node's `createHmac` does.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// `X-Nango-Hmac-Sha256` of `body`.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    // `new_from_slice` accepts any key length for HMAC (long keys are hashed first); the
    // error case exists only for MACs with fixed key sizes.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `X-Nango-Signature` of `body`: SHA-256 of the key's bytes then the body's.
pub fn legacy_signature(key: &[u8], body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(key);
    h.update(body);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Nango's reference records for its own example (nango-api.md §5 shows their
    /// first seven and last five hex digits).
    #[test]
    fn matches_nangos_reference_example() {
        let key = b"00000000-0000-4000-8000-000000000000";
        let body = br#"{"arr":[{"a":2,"b":1}],"authMode":"API_KEY","connectionId":"c1","environment":"dev","from":"nango","operation":"creation","provider":"p","providerConfigKey":"k","success":true,"tags":{"a":"2","z":"1"},"type":"auth"}"#;
        let hmac = hmac_sha256_hex(key, body);
        assert!(
            hmac.starts_with("3790385") && hmac.ends_with("0e15a"),
            "{hmac}"
        );
        let legacy = legacy_signature(key, body);
        assert!(
            legacy.starts_with("a3e8e06") && legacy.ends_with("8afe8"),
            "{legacy}"
        );
    }

    #[test]
    fn rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
