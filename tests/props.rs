//! Property tests: the fuzz targets' invariants (`tests/props/invariants.rs`), checked in CI on
//! generated inputs shaped like each parser's grammar, and on every committed fuzz corpus file
//! and regression input (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`).
//!
//! The generators aim at the corners the invariants are about (placeholders, dot segments in
//! every encoding, drop-listed and Connection-named headers, broken YAML, token error bodies)
//! rather than at uniform noise, which the fuzzers cover.

#[path = "props/invariants.rs"]
mod invariants;

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::select;

/// Runs `check` over every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`;
/// returns how many it read, so a missing corpus cannot pass silently.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable corpus entry").path();
            let data = std::fs::read(&path).expect("a readable corpus file");
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{} breaks the invariant", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn committed_corpora_hold_the_invariants() {
    for (target, check) in [
        ("template", invariants::check_template as fn(&[u8])),
        ("join", invariants::check_join),
        ("headers", invariants::check_headers),
        ("config", invariants::check_config),
        ("json", invariants::check_json),
        ("api_body", invariants::check_api_body),
    ] {
        assert!(replay(target, check) > 0, "no corpus for {target}");
    }
}

// --- generators ---------------------------------------------------------------------------

fn template_src() -> impl Strategy<Value = String> {
    let name = select(vec![
        "apiKey",
        "api_key",
        "accessToken",
        "username",
        "password",
        "connectionConfig.a",
        "connectionConfig.n.m",
        "connectionConfig.e",
        "metadata.k.v",
        "metadata.a",
        "credentials.token",
        "apiKey.x",
        "base64(apiKey)",
    ]);
    // Whole placeholders, well formed or nearly so.
    let placeholder = (
        select(vec!["${", "$<", "${ "]),
        name,
        select(vec!["}", ">", " }", ""]),
    )
        .prop_map(|(open, name, close)| format!("{open}{name}{close}"));
    let piece = prop_oneof![
        3 => placeholder,
        2 => "[a-zA-Z0-9/:. -]{0,4}",
        2 => select(vec!["${", "$<", "$", "}", ">", "||", " || ", "{", "$${"]).prop_map(str::to_string),
        1 => select(vec![
            "apiKey",
            "api_key",
            "accessToken",
            "username",
            "password",
            "connectionConfig.a",
            "connectionConfig.n.m",
            "connectionConfig.e",
            "connectionConfig",
            "metadata.k.v",
            "credentials.token",
            "apiKey.x",
            "base64(apiKey)",
            " apiKey ",
            "connectionConfig..a",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        4 => proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat()),
        1 => ".{0,40}",
    ]
}

fn join_input() -> impl Strategy<Value = String> {
    let base = select(vec![
        "https://h.example/base",
        "https://h.example/base/",
        "https://h.example",
        "http://h.example:8080/a/b?v=1",
        "https://h.example/a%2Fb",
        "https://h.example/a/..",
        "https://h.example/%2e%2e/x",
        "https://[::1]:8443/v1",
        "ftp://nope",
        "not a url",
    ]);
    let segment = prop_oneof![
        "[a-z]{0,3}",
        select(vec![
            "..",
            ".",
            "%2e%2e",
            "%2E%2e",
            ".%2e",
            "%2e.",
            "..%2f..",
            "..%5c..",
            "%2e%2e%2f",
            "..\\..",
            "...",
            "..a",
            "%252e%252e",
            "%",
            "%zz",
            "#",
            "?",
            ";",
            "https:",
            "",
        ])
        .prop_map(str::to_string),
    ];
    let prefix = select(vec![
        "/proxy",
        "/connections/c/proxy",
        "/connections/a%20b/proxy",
        "/proxyx",
        "/connections//proxy",
    ]);
    (
        base,
        prefix,
        proptest::collection::vec(segment, 0..8),
        proptest::option::of("[a-z=&%]{0,10}"),
        select(vec!["", "api_key", "a", "api_key,a", "k y,a", "x,x"]),
    )
        .prop_map(|(base, prefix, segs, query, names)| {
            let mut target = prefix.to_string();
            for s in segs {
                target.push('/');
                target.push_str(&s);
            }
            if let Some(q) = query {
                target.push('?');
                target.push_str(&q);
            }
            format!("{base}\n{target}\n{names}")
        })
}

const HEADER_NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "host",
    "authorization",
    "x-request-id",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "cf-ray",
    "cdn-loop",
    "x-amzn-trace-id",
    "connection-id",
    "provider-config-key",
    "retries",
    "retry-on",
    "base-url-override",
    "decompress",
    "nango-activity-log-id",
    "nango-is-sync",
    "nango-proxy-authorization",
    "nango-proxy-x-api-key",
    "nango-proxy-host",
    "nango-proxy-content-length",
    "nango-proxy-connection",
    "nango-proxy-x-a",
    "nango-proxy-nango-proxy-x-a",
    "nango-proxy-",
    "x-api-key",
    "x-token",
    "content-length",
    "content-type",
    "sidekey-error",
    "x-a",
    "x-b",
    "Accept",
];

fn header_input() -> impl Strategy<Value = String> {
    let name =
        prop_oneof![4 => select(HEADER_NAMES).prop_map(str::to_string), 1 => "[a-zA-Z-]{1,8}"];
    let value = prop_oneof![
        "[ -~]{0,8}",
        proptest::collection::vec(select(HEADER_NAMES), 1..4).prop_map(|v| v.join(", ")),
    ];
    proptest::collection::vec((name, value), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect::<String>()
    })
}

fn vault_input() -> impl Strategy<Value = String> {
    let credential = select(vec![
        "{type: API_KEY, apiKey: k}",
        "{type: API_KEY, apiKey: \"\"}",
        "{type: API_KEY}",
        "{type: BASIC, username: u, password: p}",
        "{type: OAUTH2, access_token: a, refresh_token: r, expires_at: \"2030-01-01T00:00:00Z\"}",
        "{type: OAUTH2, access_token: a, expires_at: tomorrow}",
        "{type: OAUTH2_CC, client_id: i, client_secret: s}",
        "{type: NOPE, apiKey: k}",
        "{type: API_KEY, apiKey: [1, 2]}",
        "{type: API_KEY, apiKey: k, apiKey: k2}",
    ]);
    let provider = select(vec!["hdr", "basic", "oauth", "cc", "missing"]);
    let integration = (
        select(vec!["a", "b", "a"]),
        provider.clone(),
        select(vec![
            "",
            ", integration_config: {baseUrl: \"https://x.example\"}",
            ", integration_config: {keyPlacement: query, keyName: k, valueTemplate: \"${apiKey}\"}",
            ", integration_config: {baseUrl: \"${connectionConfig.nope}\"}",
            ", credentials: {oauth_client_id: i, oauth_client_secret: s, scopes: x}",
            ", bogus: 1",
        ]),
    )
        .prop_map(|(k, p, extra)| format!("  - {{unique_key: {k}, provider: {p}{extra}}}\n"));
    let connection = (
        select(vec!["c1", "c2", "c1", "\"\""]),
        select(vec!["a", "b", "zz"]),
        credential,
        select(vec![
            "",
            ", connection_config: {sub: eu}",
            ", metadata: {m: {n: 1}}",
            ", connection_config: {sub: eu, sub: us}",
        ]),
    )
        .prop_map(|(id, k, c, extra)| {
            format!(
                "  - {{connection_id: {id}, provider_config_key: {k}, credentials: {c}{extra}}}\n"
            )
        });
    (
        proptest::collection::vec(integration, 0..4),
        proptest::collection::vec(connection, 0..5),
        select(vec![
            "",
            "secret_keys: [{sha256: \"0000000000000000000000000000000000000000000000000000000000000001\"}]\n",
            "secret_keys: [{sha256: nothex}]\n",
            "unknown_top_level: 1\n",
            "&a [*a]\n",
        ]),
        proptest::option::of((any::<prop::sample::Index>(), "[\\[\\]{}:,'\"&*!|>\n -]")),
    )
        .prop_map(|(ints, conns, head, damage)| {
            let mut s = format!("{head}integrations:\n{}connections:\n{}", ints.concat(), conns.concat());
            if let Some((at, text)) = damage {
                let mut i = at.index(s.len() + 1);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                s.insert_str(i, &text);
            }
            s
        })
}

fn json_input() -> impl Strategy<Value = String> {
    let token = (
        select(vec!["200", "201", "299", "300", "400", "401", "500", "abc"]),
        proptest::option::of(select(vec!["\"a\"", "\"\"", "1", "null"])),
        proptest::option::of(select(vec!["\"r\"", "\"\"", "[]"])),
        proptest::option::of(select(vec!["3600", "\"60\"", "-1", "1e3", "\"x\"", "1.5"])),
        proptest::option::of(select(vec![
            "\"invalid_grant\"",
            "\"has space\"",
            "\"\"",
            "{\"code\": 1}",
            "\"at0SECRET0accesstoken0value\"",
        ])),
        proptest::option::of("[{}\\[\\]\",: a-z0-9]{0,12}"),
    )
        .prop_map(|(status, at, rt, exp, err, tail)| {
            let mut fields = Vec::new();
            for (k, v) in [
                ("access_token", at),
                ("refresh_token", rt),
                ("expires_in", exp),
                ("error", err),
            ] {
                if let Some(v) = v {
                    fields.push(format!("\"{k}\": {v}"));
                }
            }
            format!(
                "t{status}{{{}}}{}",
                fields.join(", "),
                tail.unwrap_or_default()
            )
        });
    let api = (
        select(vec![
            "/providers",
            "/integrations",
            "/integrations/hdr",
            "/integrations/nope",
            "/config/hdr/",
            "/connections",
            "/connection",
            "/connections/c",
            "/connections/o",
            "/connections/a%20b",
            "/connections/%ff",
            "/connections/sk0SECRET0apikey0value",
            "/connections/",
        ]),
        proptest::option::of(select(vec![
            "provider_config_key=hdr",
            "provider_config_key=oauth",
            "provider_config_key=nope",
            "integrationId=hdr&limit=1",
            "connectionId=c",
            "limit=x",
            "provider_config_key=%ff",
            "provider_config_key=hdr&provider_config_key=oauth",
        ])),
    )
        .prop_map(|(p, q)| match q {
            Some(q) => format!("{p}?{q}"),
            None => p.to_string(),
        });
    prop_oneof![token, api]
}

proptest! {
    #[test]
    fn template_invariants(src in template_src()) {
        invariants::check_template(src.as_bytes());
    }

    #[test]
    fn join_invariants(input in join_input()) {
        invariants::check_join(input.as_bytes());
    }

    #[test]
    fn header_invariants(input in header_input()) {
        invariants::check_headers(input.as_bytes());
    }

    #[test]
    fn config_invariants(vault in vault_input()) {
        invariants::check_config(vault.as_bytes());
    }

    #[test]
    fn json_invariants(input in json_input()) {
        invariants::check_json(input.as_bytes());
    }
}

fn api_body_input() -> impl Strategy<Value = String> {
    let route = select(vec![
        "POST /integrations",
        "PATCH /integrations/hdr",
        "POST /connections",
        "PATCH /connections/c",
        "POST /connections/metadata",
        "PATCH /connections/metadata",
        "DELETE /connections/c",
    ]);
    let key = select(vec![
        "provider",
        "unique_key",
        "provider_config_key",
        "connection_id",
        "credentials",
        "metadata",
        "integration_config",
        "tags",
        "end_user",
        "type",
        "apiKey",
        "access_token",
        "expires_at",
        "baseUrl",
        "extra",
    ]);
    let value = prop_oneof![
        Just("\"sk0SECRET0apikey0value\"".to_string()),
        Just("\"API_KEY\"".to_string()),
        Just("\"OAUTH2\"".to_string()),
        Just("[\"pw0SECRET0password0value\"]".to_string()),
        Just("{\"type\": \"API_KEY\", \"apiKey\": 7}".to_string()),
        Just("{\"type\": \"OAUTH2\", \"access_token\": \"at0SECRET0accesstoken0value\", \"expires_at\": \"soon\"}".to_string()),
        Just("1700000000000".to_string()),
        Just("null".to_string()),
        Just("{}".to_string()),
        "\"[a-z ]{0,6}\"",
    ];
    (
        route,
        proptest::collection::vec((key, value), 0..6),
        "[{}\\[\\]\",: a-z0-9]{0,4}",
    )
        .prop_map(|(route, fields, tail)| {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("{route}\n{{{}}}{tail}", body.join(", "))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn api_body_invariants(input in api_body_input()) {
        invariants::check_api_body(input.as_bytes());
    }
}
