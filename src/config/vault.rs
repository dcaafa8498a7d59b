//! The vault file's raw shape: caller key digests, integrations and connections.
//!
//! Field names follow Nango's API (`unique_key`, `provider_config_key`, `connection_config`, …).
//! Unknown fields and repeated keys are refused, with the path of the offending field, so a typo
//! never silently drops a credential.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Diagnostic;
use crate::secret::Secret;

#[derive(Debug, Deserialize, Serialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    #[serde(default)]
    pub secret_keys: Vec<RawSecretKey>,
    #[serde(default)]
    pub integrations: Vec<RawIntegration>,
    #[serde(default)]
    pub connections: Vec<RawConnection>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSecretKey {
    pub sha256: String,
    /// A free-form label for the operator (which app holds this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the key may do (see [`crate::auth::Scope`]); absent means every scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIntegration {
    pub unique_key: String,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RawIntegrationCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_config: Option<RawIntegrationConfig>,
    /// RFC 3339; set by sidekey on API writes, optional in a hand-written vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIntegrationCredentials {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntegrationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_placement: Option<KeyPlacement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyPlacement {
    Header,
    Query,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    pub connection_id: String,
    pub provider_config_key: String,
    pub credentials: RawCredentials,
    #[serde(
        default,
        deserialize_with = "unique_map",
        skip_serializing_if = "Map::is_empty"
    )]
    pub connection_config: Map<String, Value>,
    #[serde(
        default,
        deserialize_with = "unique_map",
        skip_serializing_if = "Map::is_empty"
    )]
    pub metadata: Map<String, Value>,
    /// Nango's end user object (`id`, `email`, `display_name`, `organization`, `tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<Value>,
    #[serde(
        default,
        deserialize_with = "unique_map",
        skip_serializing_if = "Map::is_empty"
    )]
    pub tags: Map<String, Value>,
    /// RFC 3339; set by sidekey on API writes, optional in a hand-written vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A connection credential, checked for the fields its `type` needs.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(try_from = "CredentialFields", into = "CredentialFields")]
pub enum RawCredentials {
    ApiKey {
        api_key: Secret,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    OAuth2 {
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: Option<String>,
    },
    OAuth2Cc {
        client_id: Option<Secret>,
        client_secret: Option<Secret>,
        token: Option<Secret>,
        expires_at: Option<String>,
    },
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy)]
enum CredentialType {
    #[serde(rename = "API_KEY")]
    ApiKey,
    #[serde(rename = "BASIC")]
    Basic,
    #[serde(rename = "OAUTH2")]
    OAuth2,
    #[serde(rename = "OAUTH2_CC")]
    OAuth2Cc,
}

/// Every credential field of every type; [`RawCredentials`] is built from it so that a field
/// of another type is refused by name.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct CredentialFields {
    #[serde(rename = "type")]
    kind: CredentialType,
    #[serde(rename = "apiKey", skip_serializing_if = "Option::is_none")]
    api_key: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    /// Nango keeps the token endpoint's raw answer here; accepted, never written back.
    #[serde(skip_serializing)]
    raw: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Secret>,
}

impl From<RawCredentials> for CredentialFields {
    fn from(c: RawCredentials) -> Self {
        let mut f = Self {
            kind: CredentialType::ApiKey,
            api_key: None,
            username: None,
            password: None,
            access_token: None,
            refresh_token: None,
            expires_at: None,
            raw: None,
            client_id: None,
            client_secret: None,
            token: None,
        };
        match c {
            RawCredentials::ApiKey { api_key } => f.api_key = Some(api_key),
            RawCredentials::Basic { username, password } => {
                f.kind = CredentialType::Basic;
                f.username = Some(username);
                f.password = Some(password);
            }
            RawCredentials::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => {
                f.kind = CredentialType::OAuth2;
                f.access_token = Some(access_token);
                f.refresh_token = refresh_token;
                f.expires_at = expires_at;
            }
            RawCredentials::OAuth2Cc {
                client_id,
                client_secret,
                token,
                expires_at,
            } => {
                f.kind = CredentialType::OAuth2Cc;
                f.client_id = client_id;
                f.client_secret = client_secret;
                f.token = token;
                f.expires_at = expires_at;
            }
        }
        f
    }
}

impl TryFrom<CredentialFields> for RawCredentials {
    type Error = String;

    fn try_from(f: CredentialFields) -> Result<Self, String> {
        let (name, allowed): (&str, &[&str]) = match f.kind {
            CredentialType::ApiKey => ("API_KEY", &["apiKey"]),
            CredentialType::Basic => ("BASIC", &["username", "password"]),
            CredentialType::OAuth2 => (
                "OAUTH2",
                &["access_token", "refresh_token", "expires_at", "raw"],
            ),
            CredentialType::OAuth2Cc => (
                "OAUTH2_CC",
                &["client_id", "client_secret", "token", "expires_at", "raw"],
            ),
        };
        let present = [
            ("apiKey", f.api_key.is_some()),
            ("username", f.username.is_some()),
            ("password", f.password.is_some()),
            ("access_token", f.access_token.is_some()),
            ("refresh_token", f.refresh_token.is_some()),
            ("expires_at", f.expires_at.is_some()),
            ("raw", f.raw.is_some()),
            ("client_id", f.client_id.is_some()),
            ("client_secret", f.client_secret.is_some()),
            ("token", f.token.is_some()),
        ];
        if let Some((field, _)) = present.iter().find(|(n, p)| *p && !allowed.contains(n)) {
            return Err(format!(
                "field `{field}` does not belong to {name} credentials"
            ));
        }
        let need = |v: Option<Secret>, field: &str| {
            v.ok_or_else(|| format!("{name} credentials need `{field}`"))
        };
        Ok(match f.kind {
            CredentialType::ApiKey => Self::ApiKey {
                api_key: need(f.api_key, "apiKey")?,
            },
            CredentialType::Basic => Self::Basic {
                username: need(f.username, "username")?,
                password: f.password.unwrap_or_default(),
            },
            CredentialType::OAuth2 => Self::OAuth2 {
                access_token: need(f.access_token, "access_token")?,
                refresh_token: f.refresh_token,
                expires_at: f.expires_at,
            },
            CredentialType::OAuth2Cc => Self::OAuth2Cc {
                client_id: f.client_id,
                client_secret: f.client_secret,
                token: f.token,
                expires_at: f.expires_at,
            },
        })
    }
}

/// Deserializes a free-form map, refusing a repeated key (serde's maps keep the last one).
fn unique_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Map::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut m = Map::new();
            while let Some((k, v)) = a.next_entry::<String, Value>()? {
                if m.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                }
                m.insert(k, v);
            }
            Ok(m)
        }
    }
    d.deserialize_any(V)
}

impl RawCredentials {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ApiKey { .. } => "API_KEY",
            Self::Basic { .. } => "BASIC",
            Self::OAuth2 { .. } => "OAUTH2",
            Self::OAuth2Cc { .. } => "OAUTH2_CC",
        }
    }
}

/// The current time as records carry it (`created_at`, `updated_at`): RFC 3339 in UTC with
/// milliseconds, as Nango's API writes them.
pub fn now() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

/// The comment block at the top of a vault (blank lines dropped): what every rewrite of the
/// vault keeps, since a YAML value carries no comments.
pub fn leading_comments(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Parses the vault; an empty file is an empty vault. The text is pre-scanned under
/// [`super::limits`] first, and then parsed once, by serde_yaml_ng alone: a second, faster
/// parser for large files was removed because two parsers that can disagree on a security file
/// are a smuggling primitive.
pub fn parse(file: &str, src: &str) -> Result<RawVault, Diagnostic> {
    if src.trim().is_empty() {
        return Ok(RawVault::default());
    }
    super::limits::check_yaml(src).map_err(|r| Diagnostic::error(file, "", r.to_string()))?;
    // Tracking the path costs a tenth of the parse of a large vault, so it is paid only to
    // explain a refusal: the same text is parsed again with it.
    if let Ok(v) = serde_yaml_ng::from_str(src) {
        return Ok(v);
    }
    let de = serde_yaml_ng::Deserializer::from_str(src);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde_yaml_ng prefixes its own idea of the path; ours is more precise.
        let inner = match inner.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') => rest.to_string(),
            _ => inner,
        };
        let inner = scrub(&inner);
        Diagnostic::error(file, if path == "." { String::new() } else { path }, inner)
    })
}

/// serde messages may quote a scalar from the file ("invalid type: string \"sk_live…\""); a
/// vault scalar may be a secret, so quoted values are cut out of the message.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for c in msg.chars() {
        if c == '"' {
            if !in_quote {
                out.push_str("\"…");
            }
            in_quote = !in_quote;
            if !in_quote {
                out.push('"');
            }
            continue;
        }
        if !in_quote {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_name_their_path() {
        let src = r#"
connections:
  - connection_id: a
    provider_config_key: b
    credentials: {type: API_KEY, apiKey: k}
  - connection_id: a
    provider_config_key: b
    credentials: {type: API_KEY, apiKey: k, extra: 1}
"#;
        let e = parse("vault.yaml", src).expect_err("refused");
        assert_eq!(e.path, "connections[1].credentials.extra");
        assert!(e.message.contains("extra"), "{}", e.message);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let src = "integrations:\n  - unique_key: a\n    unique_key: b\n    provider: x\n";
        let e = parse("vault.yaml", src).expect_err("refused");
        assert!(e.message.contains("duplicate"), "{}", e.message);
        let src = "connections:\n  - connection_id: a\n    provider_config_key: b\n    credentials: {type: API_KEY, apiKey: k}\n    connection_config: {x: 1, x: 2}\n";
        let e = parse("vault.yaml", src).expect_err("refused");
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn messages_never_quote_values() {
        let src = "secret_keys:\n  - sha256: [\"sk_live_hidden\"]\n";
        let e = parse("vault.yaml", src).expect_err("refused");
        assert!(!e.to_string().contains("sk_live_hidden"), "{e}");
        let src = "connections:\n  - connection_id: a\n    provider_config_key: b\n    credentials: {type: API_KEY, apiKey: {nested: sk_live_hidden}}\n";
        let e = parse("vault.yaml", src).expect_err("refused");
        assert!(!e.to_string().contains("sk_live_hidden"), "{e}");
    }

    #[test]
    fn credential_types() {
        let src = r#"
connections:
  - {connection_id: a, provider_config_key: i, credentials: {type: BASIC, username: u, password: p}}
  - {connection_id: b, provider_config_key: i, credentials: {type: OAUTH2, access_token: t, refresh_token: r, expires_at: "2030-01-01T00:00:00Z"}}
  - {connection_id: c, provider_config_key: i, credentials: {type: OAUTH2_CC}}
"#;
        let v = parse("vault.yaml", src).expect("parses");
        let kinds: Vec<_> = v
            .connections
            .iter()
            .map(|c| c.credentials.type_name())
            .collect();
        assert_eq!(kinds, ["BASIC", "OAUTH2", "OAUTH2_CC"]);
        assert!(parse("v", "connections:\n  - {connection_id: a, provider_config_key: i, credentials: {type: NOPE}}\n").is_err());
    }
}
