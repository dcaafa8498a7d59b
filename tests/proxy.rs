//! The proxy core over loopback sockets: caller auth, routing, URL rewrite, header rules,
//! credential injection per auth mode, TLS/h2 upstreams, overrides and every error code.
//! Through the real binary, except where the process is not the subject (in-process,
//! [`support::app`]).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use support::app::test_app;
use support::client::{proxy_headers, TestClient, AUTH};
use support::sidekey::{run_cli, sidekey};
use support::upstream::{ok_json, reply, Upstream};
use support::CALLER_KEY;

const SECRET: &str = "sk_live_upstream_secret_value";

fn providers(base: &str) -> String {
    format!(
        r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: {base}/api
    headers: {{authorization: "Bearer ${{apiKey}}", x-fixed: "1", x-tenant: "${{connectionConfig.tenant}}"}}
qry:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}", query: {{api_key: "$<apiKey>"}}}}
basic: {{auth_mode: BASIC, proxy: {{base_url: "{base}"}}}}
oauth: {{auth_mode: OAUTH2, token_url: "{base}/token", proxy: {{base_url: "{base}"}}}}
nobase: {{auth_mode: API_KEY, proxy: {{headers: {{x-key: "${{apiKey}}"}}}}}}
private-api-generic: {{auth_mode: API_KEY}}
"#
    )
}

fn vault() -> String {
    format!(
        r#"
integrations:
  - {{unique_key: hdr, provider: hdr}}
  - {{unique_key: qry, provider: qry}}
  - {{unique_key: basic, provider: basic}}
  - {{unique_key: oauth, provider: oauth}}
  - {{unique_key: nobase, provider: nobase}}
connections:
  - {{connection_id: c1, provider_config_key: hdr, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
  - {{connection_id: c2, provider_config_key: hdr, credentials: {{type: API_KEY, apiKey: other}}, connection_config: {{tenant: acme}}}}
  - {{connection_id: c1, provider_config_key: qry, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
  - {{connection_id: c1, provider_config_key: basic, credentials: {{type: BASIC, username: user, password: "{SECRET}"}}}}
  - {{connection_id: c1, provider_config_key: oauth, credentials: {{type: OAUTH2, access_token: "{SECRET}"}}}}
  - {{connection_id: solo, provider_config_key: nobase, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
"#
    )
}

async fn setup() -> (Upstream, support::sidekey::Sidekey) {
    let up = Upstream::start(ok_json()).await;
    let sk = sidekey(&providers(&up.url("")), &vault()).start();
    (up, sk)
}

#[tokio::test]
async fn api_key_header_is_injected_and_caller_key_never_reaches_upstream() {
    let (up, sk) = setup().await;
    let c = TestClient::default();
    let mut headers = proxy_headers("c1", "hdr");
    headers.extend([
        ("x-request-id", "r1"),
        ("x-forwarded-for", "1.2.3.4"),
        ("cf-ray", "abc"),
        ("nango-is-sync", "true"),
        ("retries", "0"),
        ("x-empty", ""),
        ("accept", "application/json"),
    ]);
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/v1/items/?page=2&q=a%2Fb"),
            &headers,
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), r#"{"ok":true}"#);
    let r = up.only();
    assert_eq!(r.uri.to_string(), "/api/v1/items/?page=2&q=a%2Fb");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(r.header("x-fixed"), Some("1"));
    assert_eq!(
        r.header("x-tenant"),
        None,
        "unresolved template header left out"
    );
    assert_eq!(r.header("x-empty"), Some(""));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("host"), Some(up.addr.to_string().as_str()));
    for gone in [
        "x-request-id",
        "x-forwarded-for",
        "cf-ray",
        "nango-is-sync",
        "retries",
        "connection-id",
        "provider-config-key",
    ] {
        assert_eq!(r.header(gone), None, "{gone} must not be forwarded");
    }
    let everything = format!("{:?} {:?}", r.uri, r.headers);
    assert!(
        !everything.contains(CALLER_KEY),
        "caller key leaked upstream: {everything}"
    );

    // A connection-config template resolves per connection.
    let res = c.proxy(&sk.url(""), "/x", "c2", "hdr").await;
    assert_eq!(res.status, 200);
    assert_eq!(up.requests()[1].header("x-tenant"), Some("acme"));
}

#[tokio::test]
async fn query_placement_replaces_the_callers_parameter() {
    let (up, sk) = setup().await;
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/search?api_key=mine&q=1"),
            &proxy_headers("c1", "qry"),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200);
    let r = up.only();
    assert_eq!(r.uri.to_string(), format!("/search?q=1&api_key={SECRET}"));
    assert_eq!(r.header("authorization"), None);
}

#[tokio::test]
async fn basic_and_oauth_credentials() {
    let (up, sk) = setup().await;
    let c = TestClient::default();
    let mut h = proxy_headers("c1", "basic");
    h.push(("authorization-extra", "x"));
    assert_eq!(
        c.send("GET", &sk.url("/proxy/a"), &h, Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(c.proxy(&sk.url(""), "/b", "c1", "oauth").await.status, 200);
    let reqs = up.requests();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}

#[tokio::test]
async fn private_api_generic_header_and_query() {
    let up = Upstream::start(ok_json()).await;
    let base = up.url("/internal");
    let v = format!(
        r#"
integrations:
  - unique_key: gh
    provider: private-api-generic
    integration_config: {{baseUrl: "{base}", keyPlacement: header, keyName: x-api-key, valueTemplate: "Api-Key ${{apiKey}}"}}
  - unique_key: gq
    provider: private-api-generic
    integration_config: {{baseUrl: "{base}", keyPlacement: query, keyName: token}}
connections:
  - {{connection_id: c, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
  - {{connection_id: c, provider_config_key: gq, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
"#
    );
    let sk = sidekey(&providers("http://unused.invalid"), &v).start();
    let c = TestClient::default();
    let mut h = proxy_headers("c", "gh");
    h.push(("x-api-key", "caller-tries-its-own"));
    assert_eq!(
        c.send("GET", &sk.url("/proxy/v1/x"), &h, Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(c.proxy(&sk.url(""), "/v1/y", "c", "gq").await.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs[0].uri.to_string(), "/internal/v1/x");
    assert_eq!(
        reqs[0].header("x-api-key"),
        Some(format!("Api-Key {SECRET}").as_str())
    );
    assert_eq!(
        reqs[1].uri.to_string(),
        format!("/internal/v1/y?token={SECRET}")
    );
}

#[tokio::test]
async fn nango_proxy_headers_and_hop_by_hop_both_ways() {
    let up = Upstream::start(Arc::new(|_| {
        let mut r = reply(200, "ok");
        let h = r.headers_mut();
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("proxy-connection", "keep-alive".parse().expect("v"));
        h.insert("x-ratelimit-remaining", "41".parse().expect("v"));
        h.insert("sidekey-error", "forged".parse().expect("v"));
        r
    }))
    .await;
    let sk = sidekey(&providers(&up.url("")), &vault()).start();
    let mut h = proxy_headers("c1", "hdr");
    h.extend([
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic xyz"),
        ("x-custom", "plain"),
        ("nango-proxy-x-custom", "prefixed"),
        ("nango-proxy-x-other", "o"),
        ("nango-proxy-authorization", "Bearer sneaky"),
        ("nango-proxy-host", "evil.example"),
        ("nango-proxy-content-length", "999"),
    ]);
    let res = TestClient::default()
        .send("GET", &sk.url("/proxy/a"), &h, Bytes::new())
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-ratelimit-remaining"), Some("41"));
    assert_eq!(res.header("keep-alive"), None);
    assert_eq!(res.header("proxy-connection"), None);
    assert_eq!(
        res.header("sidekey-error"),
        None,
        "only sidekey's own answers carry it"
    );
    let r = up.only();
    assert_eq!(r.header("x-custom"), Some("prefixed"));
    assert_eq!(r.header("x-other"), Some("o"));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(r.header("host"), Some(up.addr.to_string().as_str()));
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(r.header(gone), None, "{gone}");
    }
}

#[tokio::test]
async fn binary_bodies_pass_byte_exact_with_status_and_headers() {
    let up = Upstream::start(Arc::new(|r| {
        let mut res = reply(201, r.body.clone());
        res.headers_mut().insert(
            "content-type",
            "application/octet-stream".parse().expect("v"),
        );
        res.headers_mut()
            .insert("x-upstream", "yes".parse().expect("v"));
        res
    }))
    .await;
    let sk = sidekey(&providers(&up.url("")), &vault()).start();
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let mut h = proxy_headers("c1", "hdr");
    h.push(("content-type", "application/octet-stream"));
    let res = TestClient::default()
        .send("POST", &sk.url("/proxy/upload"), &h, payload.clone())
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("x-upstream"), Some("yes"));
    assert_eq!(res.body.as_ref(), payload.as_slice());
    let r = up.only();
    assert_eq!(r.body.as_ref(), payload.as_slice());
    assert_eq!(r.header("content-length"), Some("70000"));
}

#[tokio::test]
async fn upstream_errors_and_redirects_pass_through_untouched() {
    let up = Upstream::start(Arc::new(|r| match r.uri.path() {
        "/api/missing" => reply(404, r#"{"message":"Not Found"}"#),
        _ => {
            let mut res = reply(302, "");
            res.headers_mut().insert(
                "location",
                "https://elsewhere.example/x".parse().expect("v"),
            );
            res
        }
    }))
    .await;
    let sk = sidekey(&providers(&up.url("")), &vault()).start();
    let c = TestClient::default();
    let res = c.proxy(&sk.url(""), "/missing", "c1", "hdr").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.text(), r#"{"message":"Not Found"}"#);
    assert_eq!(
        res.header("sidekey-error"),
        None,
        "the upstream's 404 is not sidekey's"
    );
    let res = c.proxy(&sk.url(""), "/moved", "c1", "hdr").await;
    assert_eq!(res.status, 302);
    assert_eq!(res.header("location"), Some("https://elsewhere.example/x"));
    assert_eq!(up.count(), 2, "the redirect was not followed");
}

#[tokio::test]
async fn every_error_code() {
    let (up, sk) = setup().await;
    let c = TestClient::default();
    let u = |p: &str| sk.url(p);
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", u("/proxy/x"), vec![], 401, "missing_auth_header"),
        (
            "GET",
            u("/proxy/x"),
            vec![("authorization", "Basic abc")],
            401,
            "malformed_auth_header",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![("authorization", "Bearer ")],
            401,
            "malformed_auth_header",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![("authorization", "Bearer wrong")],
            401,
            "unknown_account",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![("authorization", AUTH)],
            400,
            "invalid_headers",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", ""),
                ("provider-config-key", "hdr"),
            ],
            400,
            "invalid_headers",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "c1"),
                ("provider-config-key", "hdr"),
                ("retries", "many"),
            ],
            400,
            "invalid_headers",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "c1"),
                ("provider-config-key", "hdr"),
                ("retry-on", "429,abc"),
            ],
            400,
            "invalid_headers",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "c1"),
                ("provider-config-key", "nope"),
            ],
            404,
            "unknown_provider_config",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "zz"),
                ("provider-config-key", "hdr"),
            ],
            404,
            "unknown_connection",
        ),
        (
            "GET",
            u("/proxy/../x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "c1"),
                ("provider-config-key", "hdr"),
            ],
            400,
            "invalid_endpoint",
        ),
        (
            "GET",
            u("/proxy/a/%2e%2e/%2E%2E/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "c1"),
                ("provider-config-key", "hdr"),
            ],
            400,
            "invalid_endpoint",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection-id", "solo"),
                ("provider-config-key", "nobase"),
            ],
            400,
            "invalid_headers",
        ),
        (
            "GET",
            u("/elsewhere"),
            vec![("authorization", AUTH)],
            404,
            "not_found",
        ),
        (
            "TRACE",
            u("/proxy/x"),
            vec![("authorization", AUTH)],
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            u("/proxy/x"),
            vec![
                ("authorization", AUTH),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
            501,
            "upgrade_not_supported",
        ),
        (
            "GET",
            u("/connections/nobody/proxy/x"),
            vec![("authorization", AUTH)],
            404,
            "unknown_connection",
        ),
        (
            "GET",
            u("/connections/c1/proxy/x"),
            vec![("authorization", AUTH)],
            400,
            "ambiguous_connection",
        ),
        (
            "GET",
            u("/connections/c1/proxy/http://other.example/x"),
            vec![("authorization", AUTH), ("provider-config-key", "hdr")],
            400,
            "invalid_endpoint",
        ),
    ];
    for (method, url, headers, status, code) in cases {
        let res = c.send(method, &url, &headers, Bytes::new()).await;
        assert_eq!(
            res.status.as_u16(),
            status,
            "{method} {url} {headers:?}: {}",
            res.text()
        );
        assert_eq!(res.error_code(), code, "{method} {url} {headers:?}");
        assert_eq!(res.header("sidekey-error"), Some(code));
        assert!(res.json()["error"]["message"].is_string());
        assert!(!res.text().contains(SECRET));
    }
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // A socket bound but never listening holds the port, so connections to it are refused and
    // no other process can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    let sk = sidekey(&providers(&format!("http://127.0.0.1:{port}")), &vault()).start();
    let res = TestClient::default()
        .proxy(&sk.url(""), "/x", "c1", "hdr")
        .await;
    assert_eq!(res.status, 502);
    assert_eq!(res.error_code(), "upstream_unreachable");
}

#[tokio::test]
async fn integration_app_connection_selector_and_full_url() {
    let (up, sk) = setup().await;
    let c = TestClient::default();
    // By connection id, narrowed by Provider-Config-Key; then by integration key with one connection.
    let mut h = vec![("authorization", AUTH), ("provider-config-key", "qry")];
    assert_eq!(
        c.send(
            "GET",
            &sk.url("/connections/c1/proxy/v3/owners/"),
            &h,
            Bytes::new()
        )
        .await
        .status,
        200
    );
    h.truncate(1);
    let res = c
        .send(
            "GET",
            &sk.url("/connections/basic/proxy/me"),
            &h,
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let full = format!("/connections/basic/proxy/{}", up.url("/abs/path?x=1"));
    let res = c.send("GET", &sk.url(&full), &h, Bytes::new()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let reqs = up.requests();
    assert_eq!(
        reqs[0].uri.to_string(),
        format!("/v3/owners/?api_key={SECRET}")
    );
    assert_eq!(reqs[1].uri.path(), "/me");
    assert!(reqs[1]
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic ")));
    assert_eq!(reqs[2].uri.to_string(), "/abs/path?x=1");
}

#[tokio::test]
async fn h2c_callers_are_served() {
    let (up, sk) = setup().await;
    let res = TestClient::h2c()
        .proxy(&sk.url(""), "/h2", "c1", "hdr")
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.only().uri.path(), "/api/h2");
}

#[tokio::test]
async fn https_upstream_with_test_ca_resolve_and_h2() {
    let (up, _dir, args) = support::tls_upstream(ok_json()).await;
    let resolve = args[3].clone();
    let sk = sidekey(&providers("https://api.test"), &vault())
        .args(args)
        .start();
    let res = TestClient::default()
        .proxy(&sk.url(""), "/secure", "c1", "hdr")
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let r = up.only();
    assert_eq!(r.version, http::Version::HTTP_2, "ALPN chose h2");
    assert_eq!(r.uri.path(), "/api/secure");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // Without the test CA the upstream's certificate is not trusted.
    let sk2 = sidekey(&providers("https://api.test"), &vault())
        .args(["--resolve", &resolve])
        .start();
    let res = TestClient::default()
        .proxy(&sk2.url(""), "/secure", "c1", "hdr")
        .await;
    assert_eq!(res.status, 502);
    assert_eq!(res.error_code(), "upstream_tls_error");
}

#[tokio::test]
async fn overrides_to_internal_addresses_are_refused_under_public() {
    let (up, sk) = setup().await;
    let c = TestClient::default();
    for target in [
        "http://127.0.0.1:9",
        "http://0.0.0.0:9",
        "http://[::1]:9",
        "http://[::ffff:127.0.0.1]:9",
        "http://169.254.169.254",
        "http://10.0.0.1",
        "http://localhost:9", // a name that resolves to loopback: refused on the resolved IP
    ] {
        let mut h = proxy_headers("c1", "hdr");
        h.push(("base-url-override", target));
        let res = c.send("GET", &sk.url("/proxy/x"), &h, Bytes::new()).await;
        assert_eq!(res.status, 400, "{target}: {}", res.text());
        assert_eq!(
            res.error_code(),
            "base_url_override_not_allowed",
            "{target}"
        );
    }
    // An empty override counts as absent (Nango's SDK always sends it).
    let mut h = proxy_headers("c1", "hdr");
    h.push(("base-url-override", " "));
    assert_eq!(
        c.send("GET", &sk.url("/proxy/x"), &h, Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn override_policies_deny_any_and_pinned_names() {
    let up = Upstream::start(ok_json()).await;
    let c = TestClient::default();
    let target = up.url("/alt");
    let send = |sk_url: String, target: String| {
        let c = c.clone();
        async move {
            let mut h = proxy_headers("c1", "hdr");
            h.push(("base-url-override", &target));
            c.send("GET", &format!("{sk_url}/proxy/x"), &h, Bytes::new())
                .await
        }
    };
    let deny = sidekey(&providers(&up.url("")), &vault())
        .args(["--base-url-override", "deny"])
        .start();
    let res = send(deny.url(""), "https://api.github.com".into()).await;
    assert_eq!(res.error_code(), "base_url_override_not_allowed");

    let any = sidekey(&providers(&up.url("")), &vault())
        .args(["--base-url-override", "any"])
        .start();
    let res = send(any.url(""), target.clone()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        up.requests().last().map(|r| r.uri.path().to_string()),
        Some("/alt/x".into())
    );

    // A name the operator pinned with --resolve is trusted under `public`.
    let pin = format!("pinned.test:80:127.0.0.1:{}", up.port());
    let public = sidekey(&providers(&up.url("")), &vault())
        .args(["--resolve", &pin])
        .start();
    let res = send(public.url(""), "http://pinned.test/p".into()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r.header("host").map(str::to_string)),
        Some(Some("pinned.test".into()))
    );
}

#[test]
fn check_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = || {
        run_cli(
            &[
                "check",
                "--providers",
                "providers.yaml",
                "--vault",
                "vault.yaml",
            ],
            dir.path(),
        )
    };
    std::fs::write(
        dir.path().join("providers.yaml"),
        providers("http://x.example"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("vault.yaml"),
        r#"
integrations:
  - {unique_key: hdr, provider: hdr}
  - {unique_key: hdr, provider: hdr}
  - {unique_key: x, provider: missing}
connections:
  - {connection_id: a, provider_config_key: hdr, credentials: {type: BASIC, username: u}}
  - {connection_id: b, provider_config_key: nope, credentials: {type: API_KEY, apiKey: k}}
"#,
    )
    .expect("write");
    let (code, out, _) = check();
    assert_eq!(code, 1, "{out}");
    for line in [
        "vault.yaml: integrations[1].unique_key: duplicate unique_key `hdr`",
        "vault.yaml: integrations[2].provider: unknown provider `missing`",
        "vault.yaml: connections[0].credentials.type: `BASIC` does not fit provider `hdr`",
        "vault.yaml: connections[1].provider_config_key: no integration `nope`",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Broken YAML names the path inside the file.
    std::fs::write(dir.path().join("vault.yaml"), "connections:\n  - connection_id: a\n    provider_config_key: b\n    credentials: {type: API_KEY, apiKey: k, oops: 1}\n").expect("write");
    let (code, out, _) = check();
    assert_eq!(code, 1);
    assert!(
        out.contains("vault.yaml: connections[0].credentials.oops: unknown field `oops`"),
        "{out}"
    );
    std::fs::write(dir.path().join("providers.yaml"), "a: [").expect("write");
    let (code, out, _) = check();
    assert_eq!(code, 1);
    assert!(out.contains("providers.yaml: not a YAML map"), "{out}");

    // A good pair passes, listing unusable-but-unused providers only as warnings.
    std::fs::write(
        dir.path().join("providers.yaml"),
        format!(
            "{}\njwt: {{auth_mode: JWT}}\n",
            providers("http://x.example")
        ),
    )
    .expect("write");
    std::fs::write(dir.path().join("vault.yaml"), vault()).expect("write");
    let (code, out, _) = check();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("providers.yaml: jwt: warning: auth mode `JWT` is not supported"),
        "{out}"
    );
    assert!(!out.contains(SECRET));
}

#[test]
fn key_new_prints_a_key_and_its_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = run_cli(&["key", "new"], dir.path());
    assert_eq!(code, 0);
    let mut lines = out.lines();
    let key = lines.next().expect("key line");
    let digest = lines.next().expect("digest line");
    assert_eq!(
        digest,
        format!("sha256: {}", hex::encode(sidekey::auth::digest(key)))
    );
}

#[tokio::test]
async fn first_run_creates_a_private_vault_and_prints_the_key_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sk = support::sidekey::Sidekey::spawn(
        dir,
        &[
            "--listen=127.0.0.1:0".into(),
            "--admin-listen=127.0.0.1:0".into(),
            "--log-format=json".into(),
        ],
        &[],
    );
    let logs = sk.logs();
    let key = logs
        .lines()
        .find_map(|l| l.trim().strip_prefix("Authorization: Bearer "))
        .expect("key printed")
        .to_string();
    let vault = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault created");
    assert!(!vault.contains(&key), "only the digest is stored");
    assert!(vault.contains(&hex::encode(sidekey::auth::digest(&key))));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sk.path("vault.yaml"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        logs.contains("providers.yaml (bundled)"),
        "bundled catalogue used: {logs}"
    );
    let auth = format!("Bearer {key}");
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &[
                ("authorization", &auth),
                ("connection-id", "a"),
                ("provider-config-key", "b"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        res.error_code(),
        "unknown_provider_config",
        "the printed key is accepted"
    );
    assert_eq!(logs.matches(&key).count(), 1, "key printed exactly once");
}

// In-process: its subject is the management reads, not the process.
#[tokio::test]
async fn nango_management_reads() {
    let _up = Upstream::start(ok_json()).await;
    let sk = test_app(&providers(&_up.url("")), &vault()).start().await;
    let c = TestClient::default();
    let auth = [("authorization", AUTH)];
    let res = c
        .send("GET", &sk.url("/integrations"), &auth, Bytes::new())
        .await;
    assert_eq!(res.status, 200);
    let keys: Vec<String> = res.json()["data"]
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["unique_key"].as_str().expect("key").to_string())
        .collect();
    assert_eq!(keys, ["basic", "hdr", "nobase", "oauth", "qry"]);
    let res = c
        .send(
            "GET",
            &sk.url("/connections?integrationId=hdr"),
            &auth,
            Bytes::new(),
        )
        .await;
    let ids: Vec<&str> = res.json()["connections"]
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["connection_id"].as_str().expect("id"))
        .map(|s| if s == "c1" { "c1" } else { "c2" })
        .collect();
    assert_eq!(ids, ["c1", "c2"]);
    let res = c
        .send(
            "GET",
            &sk.url("/connections/c2?provider_config_key=hdr"),
            &auth,
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200);
    let v = res.json();
    assert_eq!(v["connection_config"]["tenant"], "acme");
    assert_eq!(v["credentials"]["type"], "API_KEY");
    let res = c
        .send(
            "GET",
            &sk.url("/connections/c1?provider_config_key=hdr"),
            &auth,
            Bytes::new(),
        )
        .await;
    // The environment's key has every scope, connections:read_credentials included.
    assert_eq!(
        res.json()["credentials"]["apiKey"],
        SECRET,
        "{}",
        res.text()
    );
    let res = c
        .send(
            "GET",
            &sk.url("/connections/zz?provider_config_key=hdr"),
            &auth,
            Bytes::new(),
        )
        .await;
    assert_eq!(res.error_code(), "not_found");
    let res = c
        .send("GET", &sk.url("/integrations"), &[], Bytes::new())
        .await;
    assert_eq!(res.error_code(), "missing_auth_header");
    let res = c
        .send("PUT", &sk.url("/integrations/hdr"), &auth, Bytes::new())
        .await;
    assert_eq!(res.error_code(), "method_not_allowed");
    assert_eq!(res.header("allow"), Some("GET, HEAD, PATCH, DELETE"));
    let res = c
        .send("DELETE", &sk.url("/providers"), &auth, Bytes::new())
        .await;
    assert_eq!(res.status, 405);
    assert_eq!(res.header("allow"), Some("GET, HEAD"));
    let res = c
        .send("TRACE", &sk.url("/proxy/x"), &auth, Bytes::new())
        .await;
    assert_eq!(res.status, 405);
    assert_eq!(
        res.header("allow"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
}

// In-process: records applied through the app's writer (the path of an API write) serve the
// very next request, are in the vault file, and the app then stops on its shutdown future.
#[tokio::test]
async fn records_applied_through_the_writer_serve_the_next_request() {
    let up = Upstream::start(ok_json()).await;
    let sk = test_app(
        &providers(&up.url("")),
        "integrations: []\nconnections: []\n",
    )
    .start()
    .await;
    let c = TestClient::default();
    let res = c.proxy(&sk.url(""), "/user", "late", "hdr").await;
    assert_eq!(res.status, 404, "{}", res.text());
    assert_eq!(res.error_code(), "unknown_provider_config");
    let before = sk.snapshot().generation;
    let snap = sk
        .apply(&format!(
            "integrations: [{{unique_key: hdr, provider: hdr}}]\n\
             connections: [{{connection_id: late, provider_config_key: hdr, credentials: {{type: API_KEY, apiKey: \"{SECRET}\"}}}}]\n"
        ))
        .await;
    assert!(snap.generation > before);
    assert_eq!(sk.snapshot().generation, snap.generation, "published");
    let res = c.proxy(&sk.url(""), "/user", "late", "hdr").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    let vault = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&vault).expect("the vault parses");
    assert_eq!(
        parsed["connections"][0]["connection_id"].as_str(),
        Some("late"),
        "{vault}"
    );
    sk.stop().await;
}
