//! How much CPU does sidekey spend on one request before any I/O?
//!
//! Measures the request path's pure part on a realistic snapshot (the bundled providers.yaml,
//! 1 000 connections) by calling the code that serves it, `proxy::plan`: route, method and
//! upgrade checks, caller auth, control headers, connection lookup, base URL and pool, header
//! filtering, Host, credential injection and URL rewrite — the goal is ≤ 2 µs per request —
//! and, separately, header filtering alone, template rendering alone, and what a response
//! adds for expired-credential detection (`auth_errors/observe_200_no_error`).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use sidekey::config::{self, BuildOptions, Snapshot, Sources};
use sidekey::netpolicy::OverridePolicy;
use sidekey::proxy::{headers, plan};
use sidekey::template::{Template, Values};

const CALLER_KEY: &str = "sk_bench_caller_key_0123456789abcdef";

fn snapshot() -> Snapshot {
    let mut vault = String::from("integrations:\n  - {unique_key: gh, provider: github-pat}\n  - {unique_key: hs, provider: hubspot-private-app}\nconnections:\n");
    for i in 0..1000 {
        let int = if i % 2 == 0 { "gh" } else { "hs" };
        vault.push_str(&format!(
            "  - {{connection_id: user-{i}, provider_config_key: {int}, credentials: {{type: API_KEY, apiKey: tok_{i}_abcdefghijklmnopqrstuvwxyz}}}}\n"
        ));
    }
    let src = Sources {
        providers_name: "providers.yaml".into(),
        providers: config::BUNDLED_PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault,
    };
    let opts = BuildOptions {
        env_keys: vec![sidekey::auth::digest(CALLER_KEY)],
        generation: 1,
        ..BuildOptions::default()
    };
    config::snapshot::build(&src, &opts).expect("bench snapshot builds")
}

/// A request as a Nango SDK sends it.
fn request() -> Request<Bytes> {
    let auth = format!("Bearer {CALLER_KEY}");
    Request::builder()
        .method("GET")
        .uri("/proxy/repos/octocat/hello-world/issues?state=open&per_page=100")
        .header("host", "127.0.0.1:3003")
        .header("authorization", auth)
        .header("connection-id", "user-42")
        .header("provider-config-key", "gh")
        .header("base-url-override", "")
        .header("nango-activity-log-id", "")
        .header("accept", "application/json, text/plain, */*")
        .header("content-type", "application/json")
        .header("user-agent", "axios/1.7.7")
        .header("accept-encoding", "gzip, compress, deflate, br")
        .header("connection", "keep-alive")
        .header("nango-proxy-x-github-api-version", "2022-11-28")
        .body(Bytes::new())
        .expect("request")
}

/// The request path's pure part, as the service runs it: `proxy::plan`'s steps, the lookup
/// and the connection's mark for the bounded cache's sweep (`Connection::touch`).
fn hot_path(snapshot: &Snapshot, parts: &Parts) -> http::Uri {
    let (route, controls) = plan::admit(parts, snapshot).expect("admitted");
    let conn = plan::find_connection(snapshot, &route, &controls).expect("a connection");
    let target = plan::target_of(conn, route, controls, OverridePolicy::Public).expect("a target");
    target.conn.touch();
    let (uri, headers) = plan::upstream_head(parts, &target, None).expect("a head");
    black_box(headers);
    uri
}

/// [`hot_path`] as it was before the bounded connection cache (`plan::target` in one step, no
/// mark): the baseline measured in the same run.
fn hot_path_before_cache(snapshot: &Snapshot, parts: &Parts) -> http::Uri {
    let (route, controls) = plan::admit(parts, snapshot).expect("admitted");
    let target = plan::target(snapshot, route, controls, OverridePolicy::Public).expect("a target");
    let (uri, headers) = plan::upstream_head(parts, &target, None).expect("a head");
    black_box(headers);
    uri
}

fn benches(c: &mut Criterion) {
    let snapshot = snapshot();
    let req = request();
    let (parts, _) = request().into_parts();
    assert_eq!(
        hot_path(&snapshot, &parts).to_string(),
        "https://api.github.com/repos/octocat/hello-world/issues?state=open&per_page=100"
    );
    // Renamed from `hot_path/route_auth_filter_inject_rewrite` (a re-implementation of the
    // path): this is the service's own code, with the method and upgrade checks, the base and
    // pool choice and the Host header that the old bench skipped.
    c.bench_function("hot_path/plan_admit_target_head", |b| {
        b.iter(|| hot_path(black_box(&snapshot), black_box(&parts)))
    });
    c.bench_function("hot_path/plan_admit_target_head_before_cache", |b| {
        b.iter(|| hot_path_before_cache(black_box(&snapshot), black_box(&parts)))
    });
    // What the response adds (expired-credential detection, `webhooks::status`): a 2xx on a
    // connection without an auth error reads one flag; the 401 case is the error path.
    let errors = sidekey::webhooks::status::AuthErrors::new(
        std::sync::Arc::new(sidekey::webhooks::Hooks::disabled()),
        std::sync::Arc::new(sidekey::metrics::Metrics::new()),
    );
    let conn = snapshot
        .connection("gh", "user-0")
        .expect("bench connection")
        .clone();
    c.bench_function("auth_errors/observe_200_no_error", |b| {
        b.iter(|| errors.observe(black_box(&conn), black_box(200)))
    });
    c.bench_function("headers/filter_13_request_headers", |b| {
        b.iter(|| {
            let mut out = HeaderMap::with_capacity(16);
            headers::request_headers(black_box(req.headers()), &mut out);
            out
        })
    });
    let mut res_headers = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json; charset=utf-8"),
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4999"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("etag", "W/\"abc\""),
    ] {
        res_headers.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("headers/filter_6_response_headers", |b| {
        b.iter(|| {
            let mut h = res_headers.clone();
            headers::response_headers(&mut h);
            h
        })
    });
    let t = Template::compile("Bearer ${apiKey}").expect("template");
    let cfg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"subdomain":"acme"}"#).expect("json");
    let base = Template::compile("https://${connectionConfig.subdomain}.zendesk.com/api/v2")
        .expect("template");
    let values = Values {
        api_key: Some("tok_abcdefghijklmnopqrstuvwxyz"),
        connection_config: Some(&cfg),
        ..Values::default()
    };
    c.bench_function("template/render_bearer_api_key", |b| {
        b.iter(|| t.render(black_box(&values)))
    });
    c.bench_function("template/render_connection_config_base_url", |b| {
        b.iter(|| base.render(black_box(&values)))
    });
    c.bench_function("template/compile", |b| {
        b.iter(|| {
            Template::compile(black_box(
                "Api-Key ${apiKey} for $<connectionConfig.tenant>",
            ))
        })
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
