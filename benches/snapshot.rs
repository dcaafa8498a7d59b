//! How long does a reload hold up a new configuration? Each `reload/N` iteration parses a vault
//! of N connections from YAML text, validates and precompiles it against providers.yaml
//! (`snapshot::build`) and swaps the result into an `ArcSwap` — the work `config::reload` does
//! on a blocking thread before the new snapshot serves.
//! `free_old/100000` is freeing the replaced 100 000-connection snapshot afterwards (also on the
//! reload thread), `vault_parse/100000` the YAML share of a reload, and `providers_parse/1000`
//! parsing and compiling a 1 000-provider providers.yaml.
//! The target: 100 000 connections in well under a second in a release build. The generated
//! vault is about 176 bytes per connection, a mix of the four credential types.
//!
//! `cargo bench --bench snapshot -- --sample-size 10`

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sidekey::config::providers::Catalog;
use sidekey::config::{snapshot, vault, BuildOptions, Snapshot, Sources};

const PROVIDERS: &str = r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: https://${connectionConfig.subdomain}.example.com/api/v2
    headers: {authorization: "Bearer ${apiKey}", x-tenant: "${connectionConfig.tenant}"}
qry:
  auth_mode: API_KEY
  proxy: {base_url: "https://q.example.com", query: {api_key: "${apiKey}"}}
basic:
  auth_mode: BASIC
  proxy: {base_url: "https://b.example.com"}
oauth:
  auth_mode: OAUTH2
  token_url: https://o.example.com/oauth/token
  proxy: {base_url: "https://api.o.example.com", retry: {after: retry-after}}
"#;

/// A vault of `n` connections spread over four integrations, one per auth style.
fn vault_text(n: usize) -> String {
    let mut v = String::with_capacity(n * 200);
    v.push_str("secret_keys:\n  - {sha256: \"");
    v.push_str(&"ab".repeat(32));
    v.push_str("\"}\nintegrations:\n");
    for p in ["hdr", "qry", "basic", "oauth"] {
        let _ = writeln!(v, "  - {{unique_key: {p}-int, provider: {p}}}");
    }
    v.push_str("connections:\n");
    for i in 0..n {
        let _ = match i % 4 {
            0 => writeln!(
                v,
                "  - connection_id: user-{i}\n    provider_config_key: hdr-int\n    credentials: {{type: API_KEY, apiKey: \"sk_live_{i:016x}abcdef\"}}\n    connection_config: {{subdomain: tenant{i}, tenant: t{i}}}\n    metadata: {{owner: team-{}}}",
                i % 17
            ),
            1 => writeln!(
                v,
                "  - {{connection_id: user-{i}, provider_config_key: qry-int, credentials: {{type: API_KEY, apiKey: \"key-{i:016x}\"}}}}"
            ),
            2 => writeln!(
                v,
                "  - {{connection_id: user-{i}, provider_config_key: basic-int, credentials: {{type: BASIC, username: \"u{i}\", password: \"p-{i:016x}\"}}}}"
            ),
            _ => writeln!(
                v,
                "  - {{connection_id: user-{i}, provider_config_key: oauth-int, credentials: {{type: OAUTH2, access_token: \"at-{i:016x}\", refresh_token: \"rt-{i:016x}\", expires_at: \"2030-01-01T00:00:00Z\"}}}}"
            ),
        };
    }
    v
}

/// A providers.yaml of `n` entries in the shapes the real catalogue uses.
fn providers_text(n: usize) -> String {
    let mut p = String::with_capacity(n * 400);
    for i in 0..n {
        let _ = match i % 5 {
            0 => writeln!(
                p,
                "p{i}:\n  display_name: Provider {i}\n  categories: [crm, sales]\n  auth_mode: OAUTH2\n  authorization_url: https://p{i}.example.com/oauth/authorize\n  token_url: https://p{i}.example.com/oauth/token\n  refresh_params: {{grant_type: refresh_token}}\n  default_scopes: [read, write]\n  proxy:\n    base_url: https://api.p{i}.example.com/v1\n    retry: {{after: retry-after, error_code: [\"429\", \"5xx\"]}}\n  docs: https://docs.example.com/p{i}"
            ),
            1 => writeln!(
                p,
                "p{i}:\n  auth_mode: API_KEY\n  proxy:\n    base_url: https://${{connectionConfig.subdomain}}.p{i}.example.com || https://p{i}.example.com\n    headers: {{x-api-key: \"${{apiKey}}\", x-version: \"2024-01-01\"}}\n    retry: {{at: x-ratelimit-reset, remaining: x-ratelimit-remaining}}"
            ),
            2 => writeln!(
                p,
                "p{i}:\n  alias: p{}\n  display_name: Provider {i} (API key)\n  auth_mode: API_KEY\n  proxy:\n    base_url: https://api.p{i}.example.com\n    headers: {{authorization: \"Bearer ${{apiKey}}\"}}",
                i - 2
            ),
            3 => writeln!(
                p,
                "p{i}:\n  auth_mode: BASIC\n  proxy: {{base_url: \"https://p{i}.example.com/rest\", decompress: true}}"
            ),
            _ => writeln!(
                p,
                "p{i}:\n  auth_mode: OAUTH2_CC\n  token_url: https://p{i}.example.com/token\n  token_request_auth_method: basic\n  token_params: {{audience: https://api.p{i}.example.com}}\n  proxy: {{base_url: \"https://api.p{i}.example.com\", query: {{format: json}}}}"
            ),
        };
    }
    p
}

fn reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    for n in [1_000, 10_000, 100_000] {
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault: vault_text(n),
        };
        let opts = BuildOptions::default();
        let slot = ArcSwap::from_pointee(Snapshot::default());
        // Check once that the vault is valid, so the bench measures a successful reload.
        let first = snapshot::build(&src, &opts).expect("the generated vault is valid");
        assert_eq!(first.connection_count(), n);
        slot.store(Arc::new(first));
        group.bench_with_input(BenchmarkId::from_parameter(n), &src, |b, src| {
            // The replaced snapshot is returned, so it is freed outside the measurement: the
            // new one already serves by then (`free_old` measures that part).
            b.iter_with_large_drop(|| {
                let new = snapshot::build(src, &opts).expect("valid");
                slot.swap(Arc::new(new))
            })
        });
    }
    group.finish();

    let src = Sources {
        providers_name: "providers.yaml".into(),
        providers: PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: vault_text(100_000),
    };
    c.bench_function("free_old/100000", |b| {
        b.iter_batched(
            || snapshot::build(&src, &BuildOptions::default()).expect("valid"),
            drop,
            criterion::BatchSize::PerIteration,
        )
    });

    let text = vault_text(100_000);
    c.bench_function("vault_parse/100000", |b| {
        b.iter(|| vault::parse("vault.yaml", black_box(&text)).expect("valid"))
    });
}

fn providers(c: &mut Criterion) {
    let text = providers_text(1_000);
    let catalog = Catalog::parse("providers.yaml", &text).expect("parses");
    let usable = catalog.providers.values().filter(|p| p.is_ok()).count();
    assert_eq!(usable, 1_000, "every generated provider compiles");
    c.bench_function("providers_parse/1000", |b| {
        b.iter(|| Catalog::parse("providers.yaml", black_box(&text)).expect("parses"))
    });
}

criterion_group!(benches, reload, providers);
criterion_main!(benches);
