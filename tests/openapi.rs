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
        ProxyError::StoreUnavailable(s()),
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
            | ProxyError::Internal(_)
            | ProxyError::StoreUnavailable(_) => {}
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

/// The operations of openapi.yaml: (path, method, operation), aliases resolved, `$ref` path
/// items taken from `components.pathItems`.
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths is a map") {
        let path = path.as_str().expect("a path is a string").to_string();
        let item = match item.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/pathItems/")
                    .expect("path items refer to components.pathItems");
                spec["components"]["pathItems"][name].clone()
            }
            None => item.clone(),
        };
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((path.clone(), m.to_uppercase(), op.clone()));
            }
        }
    }
    out
}

/// A concrete path for a templated one: every `{param}` becomes `x1`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("a closed {param}") + open;
        out.push_str("x1");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn tags(op: &Value) -> Vec<&str> {
    op["tags"]
        .as_sequence()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_management_operation_names_the_scope_the_router_checks() {
    use http::Method;
    use sidekey::api;
    let spec = spec();
    let ops = operations(&spec);
    let mut checked = 0;
    let mut paths: Vec<&str> = ops.iter().map(|(p, _, _)| p.as_str()).collect();
    paths.dedup();
    for path in paths {
        let concrete = concrete(path);
        let Some(route) = api::route(&concrete) else {
            continue;
        };
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let m = Method::from_bytes(method.as_bytes()).expect("a method");
            let served = api::scope(&route, &m).map(|s| s.name());
            let documented =
                ops.iter()
                    .find(|(p, om, _)| p == path && om == method)
                    .map(|(_, _, op)| {
                        op["x-sidekey-scope"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{method} {path} names no x-sidekey-scope"))
                    });
            assert_eq!(
                documented, served,
                "{method} {path}: the document says scope {documented:?}, the router checks {served:?} (None: 405)"
            );
            checked += usize::from(served.is_some());
        }
    }
    // 6 reads and 8 writes.
    assert_eq!(
        checked, 14,
        "management operations compared with the router"
    );
}

#[test]
fn every_not_served_path_is_one_the_binary_answers_501() {
    let spec = spec();
    let mut seen = 0;
    for (path, method, op) in operations(&spec) {
        if !tags(&op).contains(&"not-served") {
            continue;
        }
        seen += 1;
        assert!(
            sidekey::api::not_supported(&concrete(&path)),
            "{method} {path} is tagged not-served, but the binary does not answer it 501"
        );
    }
    assert!(seen > 0, "no not-served operations found");
}

/// The names in one `NAME='a|b|c'` line of scripts/openapi-check.sh.
fn script_list(script: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}='");
    let line = script
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("scripts/openapi-check.sh has no {name}='…' line"));
    let list = line[prefix.len()..]
        .strip_suffix('\'')
        .unwrap_or_else(|| panic!("{name} is one quoted line"));
    list.split('|').map(str::to_string).collect()
}

#[test]
fn the_conformance_check_tests_every_operation() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/openapi-check.sh"
    ))
    .expect("read scripts/openapi-check.sh");
    let mut listed: Vec<String> = ["READ_ROUTES", "WRITE_ROUTES", "PROXY_ROUTES"]
        .iter()
        .flat_map(|n| script_list(&script, n))
        .collect();
    listed.sort();
    let spec = spec();
    let mut documented = Vec::new();
    for (path, method, op) in operations(&spec) {
        let Some(id) = op["operationId"].as_str() else {
            assert!(
                tags(&op).contains(&"not-served"),
                "{method} {path} has no operationId (only the not-served routes may lack one)"
            );
            continue;
        };
        // The admin pass selects tag admin.
        if !tags(&op).contains(&"admin") {
            documented.push(id.to_string());
        }
    }
    documented.sort();
    assert_eq!(
        listed, documented,
        "READ_ROUTES, WRITE_ROUTES and PROXY_ROUTES in scripts/openapi-check.sh must name every operation of openapi.yaml outside tag admin"
    );
}

#[test]
fn every_baseline_entry_names_a_documented_operation_and_a_reason() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/openapi/baseline.json"
    ))
    .expect("read scripts/openapi/baseline.json");
    let baseline: serde_json::Value = serde_json::from_str(&text).expect("baseline.json is JSON");
    let spec = spec();
    let labels: Vec<String> = operations(&spec)
        .iter()
        .map(|(p, m, _)| format!("{m} {p}"))
        .collect();
    let entries = baseline["entries"].as_array().expect("entries is a list");
    for e in entries {
        let op = e["operation"].as_str().unwrap_or_default();
        assert!(
            labels.iter().any(|l| l == op),
            "baseline entry {} names {op:?}, which openapi.yaml does not have",
            e["id"]
        );
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.trim().len() >= 20,
            "baseline entry {} ({op}, {}) has no reason",
            e["id"],
            e["check"]
        );
    }
}
