//! openapi.yaml against the code: every error code sidekey can answer is in the document's
//! `ErrorCode` enum, and every scope an operation names is one a caller key can hold.
//!
//! `scripts/openapi-check.sh` checks the binary's answers against the document; these tests
//! catch the drift that fuzzing may not reach (an error only an unreachable upstream or a
//! failed refresh produces) in `cargo test`, without Python.

use serde_yaml_ng::Value;
use sidekey::auth::Scope;
use sidekey::error::ProxyError;

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("read openapi.yaml");
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML")
}

/// One value of every `ProxyError` variant. The match without a wildcard makes a new variant a
/// compile error here, so it cannot be added without being documented.
fn every_error() -> Vec<ProxyError> {
    let s = || "x".to_string();
    let all = vec![
        ProxyError::MissingAuthHeader,
        ProxyError::MalformedAuthHeader,
        ProxyError::UnknownAccount,
        ProxyError::InvalidHeaders(s()),
        ProxyError::UnknownProviderConfig(s()),
        ProxyError::UnknownConnection {
            connection_id: s(),
            provider_config_key: s(),
        },
        ProxyError::UnknownSelector(s()),
        ProxyError::AmbiguousConnection(s()),
        ProxyError::InvalidEndpoint(s()),
        ProxyError::BaseUrlOverrideNotAllowed(s()),
        ProxyError::NotFound(s()),
        ProxyError::Forbidden("proxy"),
        ProxyError::MethodNotAllowed(s()),
        ProxyError::UpgradeNotSupported,
        ProxyError::UpstreamUnreachable(s()),
        ProxyError::UpstreamTls(s()),
        ProxyError::UpstreamTimeout(s()),
        ProxyError::UpstreamProtocol(s()),
        ProxyError::CredentialsRefreshFailed {
            provider_error: None,
        },
        ProxyError::BadRequestBody(s()),
        ProxyError::Internal(s()),
    ];
    for e in &all {
        match e {
            ProxyError::MissingAuthHeader
            | ProxyError::MalformedAuthHeader
            | ProxyError::UnknownAccount
            | ProxyError::InvalidHeaders(_)
            | ProxyError::UnknownProviderConfig(_)
            | ProxyError::UnknownConnection { .. }
            | ProxyError::UnknownSelector(_)
            | ProxyError::AmbiguousConnection(_)
            | ProxyError::InvalidEndpoint(_)
            | ProxyError::BaseUrlOverrideNotAllowed(_)
            | ProxyError::NotFound(_)
            | ProxyError::Forbidden(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UpgradeNotSupported
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::CredentialsRefreshFailed { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::Internal(_) => {}
        }
    }
    all
}

#[test]
fn every_error_code_is_documented() {
    let spec = spec();
    let documented: Vec<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_sequence()
        .expect("components.schemas.ErrorCode.enum is a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let missing: Vec<&str> = every_error()
        .iter()
        .map(ProxyError::code)
        .filter(|c| !documented.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes missing from openapi.yaml's ErrorCode: {missing:?}"
    );
}

#[test]
fn every_documented_scope_exists() {
    let spec = spec();
    let paths = spec["paths"].as_mapping().expect("paths is a map");
    let mut named = 0;
    for (path, item) in paths {
        let Some(item) = item.as_mapping() else {
            continue;
        };
        for (method, op) in item {
            let Some(scope) = op.get("x-sidekey-scope") else {
                continue;
            };
            named += 1;
            let scope = scope.as_str().expect("x-sidekey-scope is a string");
            assert!(
                Scope::NAMES.contains(&scope),
                "{method:?} {path:?} names scope `{scope}`, which no caller key can hold"
            );
        }
    }
    // Every proxy and management operation names its scope (admin and not-served do not).
    assert!(named >= 28, "only {named} operations name a scope");
}
