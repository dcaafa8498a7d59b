//! `${...}` templates: parsed once when a snapshot is built, rendered per connection or request.
//!
//! # Grammar
//! ```text
//! template    = *( literal / placeholder )
//! placeholder = "${" path "}" / "$<" path ">"
//! path        = "apiKey" / "accessToken" / "username" / "password"
//!             / ( "connectionConfig" / "credentials" / "metadata" ) 1*( "." name )
//! name        = 1*( ALPHA / DIGIT / "_" / "-" )
//! literal     = any text; a "$" not followed by "{" or "<" is literal
//! base_url    = template *( "||" template )
//! ```
//! A template renders only when every placeholder resolves to a non-empty value; otherwise the
//! caller treats it as absent (a header left out, the next `||` alternative of a base URL tried).
//! Anything else inside `${...}` (Nango's template functions, for instance) is a compile error.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

/// A value a placeholder can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    ApiKey,
    AccessToken,
    Username,
    Password,
    ConnectionConfig(Vec<String>),
    Credentials(Vec<String>),
    Metadata(Vec<String>),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, rest) = match self {
            Self::ApiKey => return f.write_str("apiKey"),
            Self::AccessToken => return f.write_str("accessToken"),
            Self::Username => return f.write_str("username"),
            Self::Password => return f.write_str("password"),
            Self::ConnectionConfig(p) => ("connectionConfig", p),
            Self::Credentials(p) => ("credentials", p),
            Self::Metadata(p) => ("metadata", p),
        };
        write!(f, "{head}.{}", rest.join("."))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed placeholder starting at byte {0}")]
    Unclosed(usize),
    #[error("unsupported template expression `{0}`")]
    Unsupported(String),
    #[error("`{0}` may not appear in a URL (URLs are logged; credentials go in headers or query templates)")]
    SecretInUrl(String),
}

/// The values templates are rendered from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Values<'a> {
    pub api_key: Option<&'a str>,
    pub access_token: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub connection_config: Option<&'a Map<String, Value>>,
    pub credentials: Option<&'a Map<String, Value>>,
    pub metadata: Option<&'a Map<String, Value>>,
}

impl<'a> Values<'a> {
    /// The value of a placeholder; `None` when absent or empty.
    pub fn get(&self, p: &Placeholder) -> Option<Cow<'a, str>> {
        let v = match p {
            Placeholder::ApiKey => self.api_key.map(Cow::Borrowed),
            Placeholder::AccessToken => self.access_token.map(Cow::Borrowed),
            Placeholder::Username => self.username.map(Cow::Borrowed),
            Placeholder::Password => self.password.map(Cow::Borrowed),
            Placeholder::ConnectionConfig(path) => lookup(self.connection_config, path),
            Placeholder::Credentials(path) => lookup(self.credentials, path),
            Placeholder::Metadata(path) => lookup(self.metadata, path),
        }?;
        (!v.is_empty()).then_some(v)
    }
}

fn lookup<'a>(map: Option<&'a Map<String, Value>>, path: &[String]) -> Option<Cow<'a, str>> {
    let (first, rest) = path.split_first()?;
    let mut v = map?.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

fn parse_path(expr: &str) -> Result<Placeholder, TemplateError> {
    let unsupported = || TemplateError::Unsupported(expr.to_string());
    let mut segments = expr.trim().split('.');
    let head = segments.next().ok_or_else(unsupported)?;
    let rest: Vec<String> = segments.map(str::to_string).collect();
    let valid_name = |s: &String| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !rest.iter().all(valid_name) {
        return Err(unsupported());
    }
    let leaf = |p: Placeholder| {
        if rest.is_empty() {
            Ok(p)
        } else {
            Err(unsupported())
        }
    };
    match head {
        "apiKey" | "api_key" => leaf(Placeholder::ApiKey),
        "accessToken" | "access_token" => leaf(Placeholder::AccessToken),
        "username" => leaf(Placeholder::Username),
        "password" => leaf(Placeholder::Password),
        "connectionConfig" if !rest.is_empty() => Ok(Placeholder::ConnectionConfig(rest)),
        "credentials" if !rest.is_empty() => Ok(Placeholder::Credentials(rest)),
        "metadata" if !rest.is_empty() => Ok(Placeholder::Metadata(rest)),
        _ => Err(unsupported()),
    }
}

impl Template {
    /// Parses `src` per the module grammar.
    pub fn compile(src: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = src;
        let mut offset = 0;
        while let Some(i) = rest.find('$') {
            let close = match rest.as_bytes().get(i + 1) {
                Some(b'{') => '}',
                Some(b'<') => '>',
                _ => {
                    literal.push_str(&rest[..=i]);
                    offset += i + 1;
                    rest = &rest[i + 1..];
                    continue;
                }
            };
            literal.push_str(&rest[..i]);
            let body = &rest[i + 2..];
            let end = body
                .find(close)
                .ok_or(TemplateError::Unclosed(offset + i))?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Value(parse_path(&body[..end])?));
            let consumed = i + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The placeholders this template uses, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template uses the access token (and so must be rendered per request).
    pub fn uses_access_token(&self) -> bool {
        self.placeholders().any(|p| *p == Placeholder::AccessToken)
    }

    /// Renders the template; `None` when a placeholder does not resolve.
    pub fn render(&self, values: &Values<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Value(p) => out.push_str(&values.get(p)?),
            }
        }
        Some(out)
    }

    /// The first placeholder that does not resolve, if any (for load-time error messages).
    pub fn first_unresolved(&self, values: &Values<'_>) -> Option<&Placeholder> {
        self.placeholders().find(|p| values.get(p).is_none())
    }
}

/// A base URL template with `||` alternatives, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrlTemplate {
    alternatives: Vec<Template>,
}

impl BaseUrlTemplate {
    /// Compiles a base (or token) URL. Only `connectionConfig.x` and `metadata.x` may appear:
    /// a URL ends up in logs and error messages, so it must never carry a credential.
    pub fn compile(src: &str) -> Result<Self, TemplateError> {
        let alternatives = src
            .split("||")
            .map(|alt| Template::compile(alt.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        for p in alternatives.iter().flat_map(Template::placeholders) {
            if !matches!(
                p,
                Placeholder::ConnectionConfig(_) | Placeholder::Metadata(_)
            ) {
                return Err(TemplateError::SecretInUrl(p.to_string()));
            }
        }
        Ok(Self { alternatives })
    }

    /// The alternatives, in the order they are tried.
    pub fn alternatives(&self) -> &[Template] {
        &self.alternatives
    }

    /// The placeholders of every alternative.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.alternatives.iter().flat_map(Template::placeholders)
    }

    /// The first alternative whose placeholders all resolve; `Err` names the first placeholder
    /// of the last alternative that failed.
    pub fn render(&self, values: &Values<'_>) -> Result<String, String> {
        let mut missing = String::from("(empty base URL)");
        for alt in &self.alternatives {
            match alt.render(values) {
                Some(s) if !s.is_empty() => return Ok(s),
                _ => {
                    if let Some(p) = alt.first_unresolved(values) {
                        missing = p.to_string();
                    }
                }
            }
        }
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn renders_both_placeholder_forms() {
        let values = Values {
            api_key: Some("k1"),
            ..Values::default()
        };
        for src in ["Bearer ${apiKey}", "Bearer $<apiKey>"] {
            let t = Template::compile(src).expect("compiles");
            assert_eq!(t.render(&values).as_deref(), Some("Bearer k1"));
        }
    }

    #[test]
    fn literal_dollars_pass_through() {
        let t = Template::compile("cost $5 and $ more").expect("compiles");
        assert_eq!(
            t.render(&Values::default()).as_deref(),
            Some("cost $5 and $ more")
        );
    }

    #[test]
    fn unresolved_or_empty_means_absent() {
        let t = Template::compile("${connectionConfig.subdomain}.example.com").expect("compiles");
        assert_eq!(t.render(&Values::default()), None);
        let empty = config(&[("subdomain", "")]);
        let values = Values {
            connection_config: Some(&empty),
            ..Values::default()
        };
        assert_eq!(t.render(&values), None);
    }

    #[test]
    fn nested_and_numeric_values() {
        let mut cc = Map::new();
        cc.insert("a".into(), serde_json::json!({"b": 7}));
        let t = Template::compile("x-${connectionConfig.a.b}").expect("compiles");
        let values = Values {
            connection_config: Some(&cc),
            ..Values::default()
        };
        assert_eq!(t.render(&values).as_deref(), Some("x-7"));
    }

    #[test]
    fn rejects_functions_and_unclosed() {
        assert!(matches!(
            Template::compile("${base64(apiKey)}"),
            Err(TemplateError::Unsupported(_))
        ));
        assert!(matches!(
            Template::compile("Bearer ${apiKey"),
            Err(TemplateError::Unclosed(7))
        ));
        assert!(Template::compile("${connectionConfig}").is_err());
        assert!(Template::compile("${apiKey.x}").is_err());
    }

    #[test]
    fn base_url_alternatives() {
        let t = BaseUrlTemplate::compile(
            "https://${connectionConfig.instance}.example.com || https://default.example.com",
        )
        .expect("compiles");
        assert_eq!(
            t.render(&Values::default()).as_deref(),
            Ok("https://default.example.com")
        );
        let cc = config(&[("instance", "eu")]);
        let values = Values {
            connection_config: Some(&cc),
            ..Values::default()
        };
        assert_eq!(t.render(&values).as_deref(), Ok("https://eu.example.com"));
        let only = BaseUrlTemplate::compile("https://${connectionConfig.x}").expect("compiles");
        assert_eq!(
            only.render(&Values::default()),
            Err("connectionConfig.x".to_string())
        );
        for secret in [
            "https://${apiKey}@x",
            "https://x/${credentials.token}",
            "https://x || https://${password}.y",
        ] {
            assert!(
                matches!(
                    BaseUrlTemplate::compile(secret),
                    Err(TemplateError::SecretInUrl(_))
                ),
                "{secret}"
            );
        }
    }

    proptest! {
        /// Invariant: compiling never panics, and a template without `$` renders to itself.
        #[test]
        fn never_panics(src in ".{0,64}") {
            let _ = Template::compile(&src);
            let _ = BaseUrlTemplate::compile(&src);
            if !src.contains('$') {
                let t = Template::compile(&src).expect("plain text compiles");
                prop_assert_eq!(t.render(&Values::default()), Some(src.clone()));
            }
        }
    }
}
