//! What differs between two snapshots, in counts only: what a reload logs.
//!
//! Comparison is by key (integration `unique_key`; connection `provider_config_key` +
//! `connection_id`) and a few cheap fields; no secret value is ever returned, only counts.

use std::collections::HashSet;

use super::snapshot::{Integration, Snapshot};
use super::Connection;

/// Added, removed and changed entries of one kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// What differs between two snapshots, in counts only (never values).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub integrations: Counts,
    pub connections: Counts,
    pub caller_keys_added: usize,
    pub caller_keys_removed: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Compares two snapshots entry by entry. An integration counts as changed when its provider,
/// base URL, injections or OAuth client settings differ; a connection when its credential
/// fingerprint, base URL, `connection_config` or `metadata` differ.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Changes {
    let mut c = Changes::default();
    for (key, int) in &new.integrations {
        match old.integrations.get(key) {
            None => c.integrations.added += 1,
            Some(o) if !same_integration(o, int) => c.integrations.changed += 1,
            Some(_) => {}
        }
    }
    c.integrations.removed = old
        .integrations
        .keys()
        .filter(|k| !new.integrations.contains_key(*k))
        .count();
    for (key, conns) in &new.connections {
        let before = old.connections.get(key);
        for (id, conn) in conns {
            match before.and_then(|m| m.get(id)) {
                None => c.connections.added += 1,
                Some(o) if !same_connection(o, conn) => c.connections.changed += 1,
                Some(_) => {}
            }
        }
    }
    for (key, conns) in &old.connections {
        let after = new.connections.get(key);
        c.connections.removed += conns
            .keys()
            .filter(|id| !after.is_some_and(|m| m.contains_key(id)))
            .count();
    }
    let old_keys: HashSet<&[u8; 32]> = old.secret_keys.iter().map(|k| &k.digest).collect();
    let new_keys: HashSet<&[u8; 32]> = new.secret_keys.iter().map(|k| &k.digest).collect();
    c.caller_keys_added = new_keys.difference(&old_keys).count();
    c.caller_keys_removed = old_keys.difference(&new_keys).count();
    c
}

fn same_integration(a: &Integration, b: &Integration) -> bool {
    a.provider.name == b.provider.name
        && a.provider.auth_mode == b.provider.auth_mode
        && a.provider.token_url == b.provider.token_url
        && a.base_url == b.base_url
        && a.injections.len() == b.injections.len()
        && a.injections
            .iter()
            .zip(&b.injections)
            .all(|(x, y)| x.placement == y.placement && x.template == y.template)
        && a.oauth_client_id == b.oauth_client_id
        && a.oauth_client_secret == b.oauth_client_secret
        && a.scopes == b.scopes
}

fn same_connection(a: &Connection, b: &Connection) -> bool {
    let cold = |c: &Connection| {
        let e = c.extra();
        (e.connection_config, e.metadata)
    };
    // A connection a reload shared with the old snapshot is the same object: no hashing.
    std::ptr::eq(a, b)
        || (a.fingerprint() == b.fingerprint()
            && a.base_url == b.base_url
            && (a.extra_text() == b.extra_text() || cold(a) == cold(b)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::snapshot::{self, BuildOptions};
    use crate::config::Sources;

    pub(crate) const PROVIDERS: &str = r#"
hdr: {auth_mode: API_KEY, proxy: {base_url: "https://h.example", headers: {x-key: "${apiKey}"}}}
other: {auth_mode: API_KEY, proxy: {base_url: "https://o.example", headers: {x-other: "${apiKey}"}}}
"#;

    fn build(vault: &str) -> Snapshot {
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault: vault.into(),
        };
        snapshot::build(&src, &BuildOptions::default()).expect("builds")
    }

    pub(crate) const BEFORE: &str = r#"
secret_keys: [{sha256: "0000000000000000000000000000000000000000000000000000000000000001"}]
integrations: [{unique_key: a, provider: hdr}, {unique_key: b, provider: hdr}, {unique_key: gone, provider: hdr}]
connections:
  - {connection_id: same, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: key, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: meta, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}, metadata: {m: 1}}
  - {connection_id: dropped, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: c, provider_config_key: gone, credentials: {type: API_KEY, apiKey: k}}
"#;

    pub(crate) const AFTER: &str = r#"
secret_keys: [{sha256: "0000000000000000000000000000000000000000000000000000000000000002"}]
integrations: [{unique_key: a, provider: hdr}, {unique_key: b, provider: other}, {unique_key: new, provider: hdr}]
connections:
  - {connection_id: same, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: key, provider_config_key: a, credentials: {type: API_KEY, apiKey: rotated}}
  - {connection_id: meta, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}, metadata: {m: 2}}
  - {connection_id: added, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: c, provider_config_key: new, credentials: {type: API_KEY, apiKey: k}}
"#;

    #[test]
    fn diff_counts_each_kind_of_change() {
        let c = diff(&build(BEFORE), &build(AFTER));
        assert_eq!(
            c.integrations,
            Counts {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
        assert_eq!(
            c.connections,
            Counts {
                added: 2,
                removed: 2,
                changed: 2
            }
        );
        assert_eq!((c.caller_keys_added, c.caller_keys_removed), (1, 1));
        let back = diff(&build(AFTER), &build(BEFORE));
        assert_eq!(back.connections.added, 2);
        assert_eq!(back.connections.removed, 2);
    }

    #[test]
    fn diff_of_identical_files_is_empty() {
        let c = diff(&build(BEFORE), &build(BEFORE));
        assert!(c.is_empty(), "{c:?}");
        assert!(diff(&Snapshot::default(), &Snapshot::default()).is_empty());
    }

    #[test]
    fn diff_notices_a_new_injection_template() {
        let with_key_name = BEFORE.replace(
            "{unique_key: b, provider: hdr}",
            "{unique_key: b, provider: hdr, integration_config: {keyName: x-custom}}",
        );
        let c = diff(&build(BEFORE), &build(&with_key_name));
        assert_eq!(c.integrations.changed, 1);
        assert_eq!(c.connections, Counts::default());
    }
}
