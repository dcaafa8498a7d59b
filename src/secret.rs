//! A string that holds a secret: it never prints itself.
//!
//! Credentials from the vault and tokens from token endpoints live in [`Secret`], whose `Debug`
//! and `Display` print a fixed marker, so a stray `{:?}` in a log line cannot leak them.

use std::borrow::Cow;
use std::fmt;

/// A secret string; `Debug` prints `Secret(***)`. A `Box<str>` rather than a `String`: a
/// secret never grows in place, and the 8 bytes saved are per credential field in every
/// connection of the snapshot.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into().into_boxed_str())
    }

    /// The secret value, for the few places that must use it (injection, token calls).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_boxed_str())
    }
}

/// Masks the user info of every URL in a message: `http://u:pw@host/x` becomes
/// `http://***@host/x`. The whole user info goes, not only the password, because a token is
/// often sent as the user name (`https://TOKEN@github.com`). A URL runs from its `://` to the
/// next whitespace, quote or backtick, and everything before its last `@` is masked, so a
/// password holding `/` or `?` (invalid, but that is when messages are written) is caught too.
/// Every message that can print a URL goes through here: config diagnostics, base URL and
/// override errors, token request debug output.
pub fn redact_urls(msg: &str) -> Cow<'_, str> {
    if !msg.contains("://") || !msg.contains('@') {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        match url.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_info() {
        let cases = [
            ("`http://u:hunter2@h/x` is bad", "`http://***@h/x` is bad"),
            ("https://tok3n@github.com", "https://***@github.com"),
            ("a http://u:p/w?x@h:1/p b", "a http://***@h:1/p b"),
            ("no url@here", "no url@here"),
            ("http://h/x and ftp://a:b@c", "http://h/x and ftp://***@c"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_urls(input), want);
        }
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
