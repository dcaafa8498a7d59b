//! The auth webhook's body, byte for byte as Nango builds it.
//!
//! Nango serialises a webhook with `fast-safe-stringify`'s `stableStringify`: keys sorted at
//! every depth (JavaScript's default sort, by UTF-16 code units), compact, fields that are
//! `undefined` left out. The string that is signed is the string that is sent, so a receiver
//! verifying the raw body never depends on this order; it matters for receivers that compare
//! bodies, and it makes the body a pure function of the event (the outbox stores it once).

use serde_json::{Map, Value};

use super::{AuthEvent, EndUser};

/// The JSON text of an auth event for the environment `environment`.
pub fn auth_body(ev: &AuthEvent, environment: &str) -> String {
    let mut m = Map::new();
    m.insert("from".into(), "nango".into());
    m.insert("type".into(), "auth".into());
    m.insert("connectionId".into(), ev.connection_id.clone().into());
    m.insert(
        "providerConfigKey".into(),
        ev.provider_config_key.clone().into(),
    );
    m.insert("authMode".into(), ev.auth_mode.clone().into());
    let provider = if ev.provider.is_empty() {
        "unknown"
    } else {
        &ev.provider
    };
    m.insert("provider".into(), provider.into());
    m.insert(
        "environment".into(),
        ev.environment.as_deref().unwrap_or(environment).into(),
    );
    m.insert("operation".into(), ev.operation.as_str().into());
    m.insert("success".into(), ev.success.into());
    if let Some(tags) = &ev.tags {
        m.insert("tags".into(), Value::Object(tags.clone()));
    }
    // Nango sends `endUser` only on creation and override, never on a refresh failure.
    if let (Some(u), false) = (&ev.end_user, ev.operation == super::Operation::Refresh) {
        m.insert("endUser".into(), end_user(u));
    }
    if let Some(e) = &ev.error {
        let mut err = Map::new();
        err.insert("type".into(), e.kind.clone().into());
        err.insert("description".into(), e.description.clone().into());
        m.insert("error".into(), Value::Object(err));
    }
    stable(&Value::Object(m))
}

fn end_user(u: &EndUser) -> Value {
    let mut m = Map::new();
    m.insert("endUserId".into(), u.id.clone().into());
    if let Some(e) = &u.email {
        m.insert("endUserEmail".into(), e.clone().into());
    }
    if let Some(o) = &u.organization_id {
        m.insert("organizationId".into(), o.clone().into());
    }
    if let Some(t) = &u.tags {
        m.insert("tags".into(), Value::Object(t.clone()));
    }
    Value::Object(m)
}

/// `stableStringify`: compact JSON with object keys sorted as JavaScript sorts strings.
pub fn stable(v: &Value) -> String {
    let mut out = String::new();
    write_stable(v, &mut out);
    out
}

fn write_stable(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            // By UTF-16 code units, as `Array.prototype.sort` compares strings; it differs from
            // byte order only for characters above U+FFFF against U+E000..U+FFFF.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                scalar(&Value::String(k.clone()), out);
                out.push(':');
                write_stable(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_stable(x, out);
            }
            out.push(']');
        }
        other => scalar(other, out),
    }
}

/// A string, number, boolean or null as `JSON.stringify` writes it; serde_json escapes the
/// same characters (quote, backslash, controls; lowercase `\u00xx`) and leaves the rest.
fn scalar(v: &Value, out: &mut String) {
    // Serialising a scalar `Value` cannot fail; an empty string would only hide a bug.
    out.push_str(&serde_json::to_string(v).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sorted_at_every_depth_compact() {
        // Nango's reference body (nango-api.md §5), built from an unsorted object.
        let v = json!({"type":"auth","tags":{"z":"1","a":"2"},"arr":[{"b":1,"a":2}],
            "success":true,"providerConfigKey":"k","provider":"p","operation":"creation",
            "from":"nango","environment":"dev","connectionId":"c1","authMode":"API_KEY"});
        assert_eq!(
            stable(&v),
            r#"{"arr":[{"a":2,"b":1}],"authMode":"API_KEY","connectionId":"c1","environment":"dev","from":"nango","operation":"creation","provider":"p","providerConfigKey":"k","success":true,"tags":{"a":"2","z":"1"},"type":"auth"}"#
        );
    }

    #[test]
    fn javascript_string_order_and_escapes() {
        // U+FF01 sorts after U+1F600 in UTF-16 (0xFF01 > 0xD83D), before it in UTF-8.
        let v = json!({"\u{ff01}": 1, "\u{1f600}": 2, "a\"\n\u{1}": null});
        assert_eq!(
            stable(&v),
            "{\"a\\\"\\n\\u0001\":null,\"\u{1f600}\":2,\"\u{ff01}\":1}"
        );
    }

    #[test]
    fn a_refresh_failure_has_no_end_user_and_carries_the_error() {
        let ev = AuthEvent {
            operation: super::super::Operation::Refresh,
            success: false,
            connection_id: "c".into(),
            provider_config_key: "k".into(),
            provider: "github".into(),
            auth_mode: "OAUTH2".into(),
            environment: None,
            end_user: Some(EndUser {
                id: "u".into(),
                ..EndUser::default()
            }),
            tags: None,
            error: Some(super::super::EventError {
                kind: "refresh_token_external_error".into(),
                description: "d".into(),
            }),
            webhook_url_override: None,
        };
        assert_eq!(
            auth_body(&ev, "prod"),
            r#"{"authMode":"OAUTH2","connectionId":"c","environment":"prod","error":{"description":"d","type":"refresh_token_external_error"},"from":"nango","operation":"refresh","provider":"github","providerConfigKey":"k","success":false,"type":"auth"}"#
        );
    }
}
