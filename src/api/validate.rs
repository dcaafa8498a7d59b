//! Nango's limits on the fields of connection bodies, checked on the JSON before it is
//! turned into records: lengths, the tag-key pattern and count, e-mail addresses, and no
//! `null` where Nango's schema takes "absent or a value". serde checks the shape (types,
//! unknown fields); this checks what a well-shaped body may still not hold, so a body Nango
//! refuses is refused here with the same path.
//!
//! Only values of the right type are looked at: a wrong type is left for serde to report.
//! Messages never repeat a value (it may be a credential).

use serde_json::{Map, Value};

use super::ApiError;

/// Characters of an imported API key, user name, password or OAUTH2_CC token at most.
const MAX_SECRET: usize = 1024;
const MAX_TOKEN: usize = 4096;
const MAX_NAME: usize = 255;
const MAX_TAGS: usize = 10;
const MAX_TAG_KEY: usize = 64;

fn refuse(path: &[&str], message: &str) -> ApiError {
    ApiError::field("invalid_body", path, message)
}

/// `POST /connections`.
pub(super) fn post_connection(body: Option<&Value>) -> Result<(), ApiError> {
    let Some(Value::Object(body)) = body else {
        return Ok(());
    };
    no_nulls(body, &mut Vec::new(), &["metadata", "connection_config"])?;
    if let Some(Value::Object(eu)) = body.get("end_user") {
        end_user(eu)?;
    }
    if let Some(Value::Object(t)) = body.get("tags") {
        tags(t, &["tags"])?;
    }
    if let Some(Value::Object(c)) = body.get("credentials") {
        credentials(c)?;
    }
    if let Some(Value::Object(cc)) = body.get("connection_config") {
        let scopes = cc.get("oauth_scopes_override");
        if scopes.is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
            return Err(refuse(
                &["connection_config", "oauth_scopes_override"],
                "Invalid input: expected an array of strings",
            ));
        }
    }
    Ok(())
}

/// `PATCH /connections/{id}`: the same end user and tag rules as an import.
pub(super) fn patch_connection(body: Option<&Value>) -> Result<(), ApiError> {
    let Some(Value::Object(body)) = body else {
        return Ok(());
    };
    no_nulls(body, &mut Vec::new(), &[])?;
    if let Some(Value::Object(eu)) = body.get("end_user") {
        end_user(eu)?;
    }
    if let Some(Value::Object(t)) = body.get("tags") {
        tags(t, &["tags"])?;
    }
    Ok(())
}

/// Refuses `null` anywhere but inside the free-form objects named in `free` (top level only).
fn no_nulls<'a>(
    obj: &'a Map<String, Value>,
    path: &mut Vec<&'a str>,
    free: &[&str],
) -> Result<(), ApiError> {
    for (k, v) in obj {
        path.push(k);
        if path.len() == 1 && free.contains(&k.as_str()) && !v.is_null() {
            path.pop();
            continue;
        }
        match v {
            Value::Null => {
                return Err(refuse(
                    path,
                    "Invalid input: expected a value, received null",
                ))
            }
            Value::Object(inner) => no_nulls(inner, path, &[])?,
            _ => {}
        }
        path.pop();
    }
    Ok(())
}

pub(crate) fn end_user(eu: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(Value::String(id)) = eu.get("id") {
        length(id, 1, MAX_NAME, &["end_user", "id"])?;
    }
    if let Some(Value::String(e)) = eu.get("email") {
        if !is_email(e) {
            return Err(refuse(&["end_user", "email"], "Invalid email"));
        }
    }
    if let Some(Value::String(d)) = eu.get("display_name") {
        length(d, 0, MAX_NAME, &["end_user", "display_name"])?;
    }
    if let Some(Value::Object(o)) = eu.get("organization") {
        for field in ["id", "display_name"] {
            if let Some(Value::String(s)) = o.get(field) {
                length(s, 0, MAX_NAME, &["end_user", "organization", field])?;
            }
        }
    }
    if let Some(Value::Object(t)) = eu.get("tags") {
        tags(t, &["end_user", "tags"])?;
    }
    Ok(())
}

/// Nango's tag rules: at most ten keys matching `^[a-zA-Z][a-zA-Z0-9_\-./]*$` (≤ 64), unique
/// once lower-cased, each holding a string of 1–255 characters; `end_user_email` an e-mail.
pub(crate) fn tags(t: &Map<String, Value>, at: &[&str]) -> Result<(), ApiError> {
    if t.len() > MAX_TAGS {
        return Err(refuse(at, "Too many tags (at most 10)"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in t {
        let path: Vec<&str> = at.iter().copied().chain([k.as_str()]).collect();
        if !is_tag_key(k) {
            return Err(refuse(
                &path,
                "Tag keys start with a letter and hold only letters, digits and _-./ (at most 64)",
            ));
        }
        if !seen.insert(k.to_ascii_lowercase()) {
            return Err(refuse(
                &path,
                "Duplicate tag key (keys are case-insensitive)",
            ));
        }
        let Value::String(s) = v else {
            return Err(refuse(&path, "Invalid input: expected string"));
        };
        length(s, 1, MAX_NAME, &path)?;
        if k.eq_ignore_ascii_case("end_user_email") && !is_email(s) {
            return Err(refuse(&path, "Invalid email"));
        }
    }
    Ok(())
}

fn credentials(c: &Map<String, Value>) -> Result<(), ApiError> {
    let limits: &[(&str, usize, usize)] = match c.get("type").and_then(Value::as_str) {
        Some("API_KEY") => &[("apiKey", 1, MAX_SECRET)],
        Some("BASIC") => &[("username", 0, MAX_SECRET), ("password", 0, MAX_SECRET)],
        Some("OAUTH2") => &[("access_token", 1, usize::MAX)],
        Some("OAUTH2_CC") => &[("token", 0, MAX_TOKEN)],
        _ => &[],
    };
    for (field, min, max) in limits {
        if let Some(Value::String(s)) = c.get(*field) {
            length(s, *min, *max, &["credentials", field])?;
        }
    }
    Ok(())
}

/// Length in characters (as Nango's zod counts UTF-16 units; the two agree below U+10000).
pub(crate) fn length(s: &str, min: usize, max: usize, path: &[&str]) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min {
        return Err(refuse(
            path,
            &format!("Too short: at least {min} character(s)"),
        ));
    }
    if n > max {
        return Err(refuse(path, &format!("Too long: at most {max} characters")));
    }
    Ok(())
}

fn is_tag_key(k: &str) -> bool {
    let mut chars = k.chars();
    k.len() <= MAX_TAG_KEY
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// The address shape Nango's schema library accepts: `local@domain.tld`, at least five
/// characters, the local part of letters, digits and `_'+-.` (not starting with a dot, not
/// ending with `'` or `.`), no `..`, domain labels of letters, digits and `-` (not starting
/// with `-`), the last of two or more letters.
pub(crate) fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && !local.starts_with('.')
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '+' | '-' | '.'))
        && local
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels[..labels.len() - 1].iter().all(|l| {
            l.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|l| l.len() >= 2 && l.chars().all(|c| c.is_ascii_alphabetic()));
    s.len() >= 5 && !s.contains("..") && local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn post(v: Value) -> Result<(), ApiError> {
        post_connection(Some(&v))
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+x@mail.example.org", "o'neil@x.io"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a@b",
            "@b.co",
            "a@.co",
            "a..b@c.co",
            ".a@b.co",
            "a@b.c",
            "a b@c.co",
            "a@b.c0",
            "a.@b.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn tag_rules() {
        assert!(post(json!({"tags": {"team": "a", "Env.Name/x-1_y": "b"}})).is_ok());
        let path = |v: Value| post(v).expect_err("refused").errors[0].path.clone();
        assert_eq!(path(json!({"tags": {"1team": "a"}})), ["tags", "1team"]);
        assert_eq!(path(json!({"tags": {"team": ""}})), ["tags", "team"]);
        assert_eq!(
            path(json!({"tags": {"team": "x".repeat(256)}})),
            ["tags", "team"]
        );
        assert_eq!(
            path(json!({"tags": {"Team": "a", "team": "b"}})),
            ["tags", "team"]
        );
        assert_eq!(
            path(json!({"tags": {"end_user_email": "nope"}})),
            ["tags", "end_user_email"]
        );
        let many: Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(path(json!({ "tags": many })), ["tags"]);
        assert_eq!(
            path(json!({"end_user": {"id": "u", "tags": {"x": 1}}})),
            ["end_user", "tags", "x"]
        );
    }

    #[test]
    fn end_user_and_credential_lengths() {
        let path = |v: Value| post(v).expect_err("refused").errors[0].path.clone();
        assert_eq!(path(json!({"end_user": {"id": ""}})), ["end_user", "id"]);
        assert_eq!(
            path(json!({"end_user": {"id": "u", "email": "x"}})),
            ["end_user", "email"]
        );
        assert_eq!(
            path(
                json!({"end_user": {"id": "u", "organization": {"id": "o", "display_name": "d".repeat(256)}}})
            ),
            ["end_user", "organization", "display_name"]
        );
        let long = "k".repeat(1025);
        let e =
            post(json!({"credentials": {"type": "API_KEY", "apiKey": long}})).expect_err("refused");
        assert_eq!(e.errors[0].path, ["credentials", "apiKey"]);
        assert!(
            !format!("{e:?}").contains("kkkk"),
            "the value is not repeated"
        );
        assert!(
            post(json!({"credentials": {"type": "BASIC", "username": "", "password": ""}})).is_ok()
        );
    }

    #[test]
    fn nulls_are_refused_outside_free_form_objects() {
        let e = post(json!({"webhook_url_override": null})).expect_err("refused");
        assert_eq!(e.errors[0].path, ["webhook_url_override"]);
        let e = post(json!({"end_user": {"id": "u", "email": null}})).expect_err("refused");
        assert_eq!(e.errors[0].path, ["end_user", "email"]);
        assert!(post(json!({"metadata": {"a": null}, "connection_config": {"b": null}})).is_ok());
        let e = post(json!({"metadata": null})).expect_err("refused");
        assert_eq!(e.errors[0].path, ["metadata"]);
        let e = patch_connection(Some(&json!({"tags": null}))).expect_err("refused");
        assert_eq!(e.errors[0].path, ["tags"]);
    }
}
