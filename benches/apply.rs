//! Does one write cost the same at 1 000 and 100 000 connections? Each `put/N` iteration
//! applies one connection upsert to a snapshot of N connections (`Snapshot::with`: compile
//! the record, insert it into the persistent maps), `delete/N` one removal, and
//! `put_integration/N` replaces a small integration (recompiling its 10 connections) beside
//! the big one. The write API's in-memory cost is this, plus the file rewrite.
//! Target (issue 12): flat from 1k to 100k, and ≤ 1 ms at 100k.
//!
//! `cargo bench --bench apply`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::Map;
use sidekey::config::vault::{RawConnection, RawCredentials, RawIntegration};
use sidekey::config::{snapshot, BuildOptions, Change, Snapshot, Sources};
use sidekey::secret::Secret;

const PROVIDERS: &str = r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: https://api.example.com/v2
    headers: {authorization: "Bearer ${apiKey}"}
small:
  auth_mode: API_KEY
  proxy: {base_url: "https://s.example.com", query: {api_key: "${apiKey}"}}
"#;

fn build(n: usize) -> Snapshot {
    let mut v = String::from(
        "integrations:\n  - {unique_key: big, provider: hdr}\n  - {unique_key: small, provider: small}\nconnections:\n",
    );
    for i in 0..n {
        let _ = writeln!(
            v,
            "  - {{connection_id: user-{i}, provider_config_key: big, credentials: {{type: API_KEY, apiKey: \"sk_{i:016x}\"}}}}"
        );
    }
    for i in 0..10 {
        let _ = writeln!(
            v,
            "  - {{connection_id: s-{i}, provider_config_key: small, credentials: {{type: API_KEY, apiKey: \"k{i}\"}}}}"
        );
    }
    let src = Sources {
        providers_name: "providers.yaml".into(),
        providers: PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: v,
    };
    snapshot::build(&src, &BuildOptions::default()).expect("valid")
}

fn conn(id: &str) -> RawConnection {
    RawConnection {
        connection_id: id.into(),
        provider_config_key: "big".into(),
        credentials: RawCredentials::ApiKey {
            api_key: Secret::new("sk_new_value"),
        },
        connection_config: Map::new(),
        metadata: Map::new(),
        end_user: None,
        tags: Map::new(),
        webhook_url_override: None,
        created_at: None,
        updated_at: None,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    for n in [1_000usize, 10_000, 100_000] {
        let snap = build(n);
        g.bench_with_input(BenchmarkId::new("put", n), &snap, |b, s| {
            b.iter(|| {
                black_box(
                    s.with(Change::PutConnection(conn("user-7"), 1))
                        .expect("ok"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("delete", n), &snap, |b, s| {
            b.iter(|| {
                black_box(
                    s.with(Change::DeleteConnection {
                        provider_config_key: "big".into(),
                        connection_id: "user-7".into(),
                    })
                    .expect("ok"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("put_integration", n), &snap, |b, s| {
            let raw = RawIntegration {
                unique_key: "small".into(),
                provider: "small".into(),
                display_name: Some("Small".into()),
                credentials: None,
                integration_config: None,
                created_at: None,
                updated_at: None,
            };
            b.iter(|| black_box(s.with(Change::PutIntegration(raw.clone())).expect("ok")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
