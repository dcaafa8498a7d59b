//! A fleet of sidekeys on one PostgreSQL store: the real binary, three replicas on a private
//! cluster (tests/support/pg.rs), driven over HTTP on 127.0.0.1.
//!
//! - A write on one replica is served by the others (and the visibility latency over 200
//!   writes is printed: `cargo test --test fleet -- --nocapture`).
//! - Secrets are sealed in the database: a `pg_dump` holds no plaintext secret.
//! - Many concurrent requests over three replicas on an expired OAuth token make exactly one
//!   token call against an endpoint that rotates refresh tokens, and every request is served.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::client::{TestClient, TestResponse};
use support::pg::Pg;
use support::sidekey::{sidekey, Sidekey};
use support::upstream::{ok_json, reply, Recorded, Upstream};

const KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
const AUTH: &str = "Bearer test-caller-key-0123456789";
const SECRET: &str = "sk_live_fleet_secret_value_1";

fn providers(api: &str, token: &str) -> String {
    format!(
        r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: {api}/api
    headers: {{authorization: "Bearer ${{apiKey}}"}}
oa: {{auth_mode: OAUTH2, token_url: "{token}/oauth/token", proxy: {{base_url: "{api}/api"}}}}
"#
    )
}

fn replica(pg: &Pg, providers: &str) -> Sidekey {
    replica_with(pg, providers, &[])
}

/// [`replica`] with more arguments (a `--connection-cache`).
fn replica_with(pg: &Pg, providers: &str, args: &[&str]) -> Sidekey {
    sidekey(providers, "")
        .env("RUST_LOG", "info,sidekey::store=debug")
        .arg(format!("--store={}", pg.url()))
        .args(args.iter().copied())
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .start()
}

/// Whether `base` lists connection `id` (the list carries no credential, so reading it does
/// not refresh an OAuth token, as `GET /connections/{id}` would).
async fn lists(c: &TestClient, base: &str, id: &str) -> bool {
    let res = call(c, base, "GET", "/connections", Value::Null).await;
    res.status == 200
        && res.json()["connections"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["connection_id"] == id))
}

async fn call(c: &TestClient, base: &str, method: &str, path: &str, body: Value) -> TestResponse {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    c.send(
        method,
        &format!("{base}{path}"),
        &[
            ("authorization", AUTH),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// How many connections replica `r`'s connection cache holds (its metrics).
async fn cached(c: &TestClient, r: &Sidekey) -> u64 {
    let res = c
        .send("GET", &r.admin_url("/metrics"), &[], Bytes::new())
        .await;
    res.text()
        .lines()
        .find_map(|l| l.strip_prefix("sidekey_connection_cache_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_served_by_the_others() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let b = replica(&pg, &p);
    // The third replica holds every connection (no bounded cache): both modes in one fleet.
    let c3 = replica_with(&pg, &p, &["--connection-cache", "0"]);
    let c = TestClient::http1();

    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u1",
               "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());

    // Served by the other two replicas, with the credential written through the first.
    for other in [&b, &c3] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let res = c.proxy(&other.url(""), "/x", "u1", "gh").await;
            if res.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not served by another replica: {} {}",
                res.status,
                res.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let auths: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert!(
        auths.iter().all(|a| a == &format!("Bearer {SECRET}")),
        "{auths:?}"
    );
    assert_eq!(auths.len(), 2);

    // A delete on another replica reaches the first.
    let res = call(
        &c,
        &b.url(""),
        "DELETE",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = c.proxy(&a.url(""), "/x", "u1", "gh").await;
        if res.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "delete not seen: {}", res.status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Visibility latency: a connection the next replica holds in its cache (it read it once)
    // gets a new credential through one replica; the next is polled until its GET shows it.
    // That replica answers from its cache, so this is the notification path. Writes rotate
    // over the three replicas.
    let replicas = [&a, &b, &c3];
    let api_key = |res: &TestResponse| {
        res.json()["credentials"]["apiKey"]
            .as_str()
            .map(str::to_string)
    };
    let mut lat = Vec::new();
    for i in 0..200 {
        let (w, r) = (replicas[i % 3], replicas[(i + 1) % 3]);
        let id = format!("lat-{i}");
        let put = |key: String| {
            json!({"provider_config_key": "gh", "connection_id": id,
                   "credentials": {"type": "API_KEY", "apiKey": key}})
        };
        let res = call(
            &c,
            &w.url(""),
            "POST",
            "/connections",
            put(format!("k-{i}")),
        )
        .await;
        assert_eq!(res.status, 201, "{}", res.text());
        let get = format!("/connections/{id}?provider_config_key=gh");
        // A cached replica reads it from the store; the whole-load one waits for the
        // notification.
        let deadline = Instant::now() + Duration::from_secs(10);
        while call(&c, &r.url(""), "GET", &get, Value::Null).await.status != 200 {
            assert!(
                Instant::now() < deadline,
                "{id} never visible on the reader"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let res = call(
            &c,
            &w.url(""),
            "POST",
            "/connections",
            put(format!("k-{i}-b")),
        )
        .await;
        assert_eq!(res.status, 201, "{}", res.text());
        let written = Instant::now();
        let deadline = written + Duration::from_secs(10);
        loop {
            let res = call(&c, &r.url(""), "GET", &get, Value::Null).await;
            if api_key(&res).as_deref() == Some(format!("k-{i}-b").as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}'s new credential never visible"
            );
        }
        lat.push(written.elapsed());
    }
    // Baseline in the same minute: the same write and read on one replica (the write is
    // answered after it is visible there, so this is one write plus one read).
    let mut local = Vec::new();
    for i in 0..200 {
        let w = replicas[i % 3];
        let id = format!("local-{i}");
        let res = call(
            &c,
            &w.url(""),
            "POST",
            "/connections",
            json!({"provider_config_key": "gh", "connection_id": id,
                   "credentials": {"type": "API_KEY", "apiKey": format!("k-{i}")}}),
        )
        .await;
        assert_eq!(res.status, 201, "{}", res.text());
        let read = Instant::now();
        let res = call(
            &c,
            &w.url(""),
            "GET",
            &format!("/connections/{id}?provider_config_key=gh"),
            Value::Null,
        )
        .await;
        assert_eq!(res.status, 200, "a write not visible where it was answered");
        local.push(read.elapsed());
    }
    local.sort();
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let (l50, l99) = (percentile(&local, 0.5), percentile(&local, 0.99));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "cross-replica visibility over {} writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         baseline (read on the writing replica): p50 {:.2} ms, p99 {:.2} ms; ratio p50 {:.1} x, p99 {:.1} x",
        lat.len(),
        ms(p50),
        ms(p99),
        ms(lat[lat.len() - 1]),
        ms(l50),
        ms(l99),
        ms(p50) / ms(l50).max(1e-3),
        ms(p99) / ms(l99).max(1e-3),
    );
    if std::env::var("FLEET_LAG").is_ok() {
        for r in replicas {
            for l in r.logs().lines().filter(|l| l.contains("commit_us")) {
                let v: Value = serde_json::from_str(l).unwrap_or_default();
                if v["commit_us"].as_f64().unwrap_or(0.0) > 20_000.0 {
                    eprintln!("slow commit: {l}");
                }
            }
            for l in r.logs().lines().filter(|l| l.contains("lag_ms")) {
                let v: Value = serde_json::from_str(l).unwrap_or_default();
                let lag = v["lag_ms"].as_f64().unwrap_or(0.0);
                if lag > 20.0 {
                    eprintln!("slow apply: {l}");
                }
            }
        }
    }
    // No timed assertion: the figure is reported above and in BENCHMARKS.md (a shared CI
    // machine under load would make a latency bound flaky); each write was still seen by
    // every replica within its 10 s deadline.
    let _ = p99;

    // Every replica comes to hold the same connections: 400 from the loops, none left of u1.
    for r in replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let res = call(&c, &r.url(""), "GET", "/connections", Value::Null).await;
            assert_eq!(res.status, 200);
            let n = res.json()["connections"].as_array().map_or(0, Vec::len);
            if n == 400 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} connections on {}",
                r.url("")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Sealed at rest: the dump has no plaintext secret, and the sealed envelope instead.
    let dump = pg.dump();
    assert!(!dump.contains(SECRET), "a plaintext secret in pg_dump");
    assert!(!dump.contains("k-17\""), "a plaintext secret in pg_dump");
    assert!(dump.contains("enc:v1:"), "no sealed value in pg_dump");
    for r in replicas {
        assert!(!r.logs().contains(SECRET), "a secret in the logs");
    }
}

/// The token endpoint of a provider that rotates refresh tokens: each refresh token works
/// once; a spent one gets `invalid_grant`.
struct Rotating {
    calls: AtomicUsize,
    refused: AtomicUsize,
    current: Mutex<String>,
}

fn form(r: &Recorded) -> Vec<(String, String)> {
    url_decode(&String::from_utf8_lossy(&r.body))
}

fn url_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let dec = |x: &str| {
                percent_encoding::percent_decode_str(&x.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_three_replicas_refresh_once() {
    let pg = Pg::start();
    let rot = Arc::new(Rotating {
        calls: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        current: Mutex::new("rt-1".into()),
    });
    let r2 = rot.clone();
    let up = Upstream::start(Arc::new(move |r: &Recorded| {
        if r.uri.path() == "/oauth/token" {
            r2.calls.fetch_add(1, Ordering::SeqCst);
            // Slow enough that every replica's requests arrive while it is out.
            std::thread::sleep(Duration::from_millis(200));
            let f = form(r);
            let given = f
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut cur = r2.current.lock().expect("lock");
            if given != *cur {
                r2.refused.fetch_add(1, Ordering::SeqCst);
                return reply(400, r#"{"error":"invalid_grant"}"#);
            }
            let n = r2.calls.load(Ordering::SeqCst);
            *cur = format!("rt-{}", n + 1);
            let mut res = reply(
                200,
                json!({"access_token": format!("at-{}", n + 1), "refresh_token": *cur,
                       "expires_in": 3600, "token_type": "Bearer"})
                .to_string(),
            );
            res.headers_mut()
                .insert("content-type", "application/json".parse().expect("value"));
            return res;
        }
        let ok = r.header("authorization") == Some("Bearer at-2");
        reply(if ok { 200 } else { 401 }, "{}")
    }))
    .await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let b = replica(&pg, &p);
    let c3 = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "oa", "unique_key": "o",
               "credentials": {"type": "OAUTH2", "client_id": "cid", "client_secret": "csecret"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "o", "connection_id": "u",
               "credentials": {"type": "OAUTH2", "access_token": "at-1", "refresh_token": "rt-1",
                               "expires_at": "2020-01-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    // Every replica knows the connection before the burst.
    for r in [&b, &c3] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lists(&c, &r.url(""), "u").await {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // 300 by default (the machine has two cores); FLEET_REFRESH_N=1000 for the issue's figure.
    let n_requests: usize = std::env::var("FLEET_REFRESH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let bases: Vec<String> = [&a, &b, &c3].iter().map(|r| r.url("")).collect();
    let mut tasks = Vec::new();
    for i in 0..n_requests {
        let base = bases[i % 3].clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.proxy(&base, "/x", "u", "o").await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    println!(
        "{n_requests} requests over 3 replicas: {served} served, {} token call(s), {} refused",
        rot.calls.load(Ordering::SeqCst),
        rot.refused.load(Ordering::SeqCst)
    );
    assert_eq!(
        rot.refused.load(Ordering::SeqCst),
        0,
        "invalid_grant: a spent refresh token was used"
    );
    assert_eq!(
        rot.calls.load(Ordering::SeqCst),
        1,
        "exactly one token call for the fleet"
    );
    assert_eq!(served, n_requests, "every request served: {statuses:?}");
    // The rotated refresh token is what the store holds (sealed), on every replica.
    let res = call(
        &c,
        &c3.url(""),
        "GET",
        "/connections/u?provider_config_key=o&refresh_token=true",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json()["credentials"]["refresh_token"],
        "rt-2",
        "{}",
        res.text()
    );
    assert!(
        !pg.dump().contains("rt-2"),
        "a plaintext refresh token in pg_dump"
    );
}

#[test]
fn the_store_refuses_plaintext_secrets_without_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Refused before any connection is tried: no database needed, and the URL (with its
    // password) is never printed.
    let url = "--store=postgres://sidekey:hunter2-password@127.0.0.1:1/sidekey";
    let args = [
        "serve",
        url,
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
    ];
    let (code, out, err) = support::sidekey::run_cli(&args, dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("SIDEKEY_ENCRYPTION_KEY is not set"), "{err}");
    assert!(err.contains("--allow-plaintext-store"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );
    // A URL that is not PostgreSQL's is refused without being echoed.
    let (code, _, err) =
        support::sidekey::run_cli(&["migrate", "--store=mysql://u:hunter2@h/db"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("must be a postgres://"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn migrate_creates_the_schema_once() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("--store={}", pg.url());
    for _ in 0..2 {
        let (code, out, err) = support::sidekey::run_cli(&["migrate", &url], dir.path());
        assert_eq!(code, 0, "{out}{err}");
        let latest = sidekey::store::postgres::schema::latest();
        assert!(
            out.contains(&format!("schema is at version {latest}")),
            "{out}"
        );
    }
    let tables = pg.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'sidekey%'");
    assert_eq!(
        tables.trim(),
        "sidekey_changes,sidekey_connect_sessions,sidekey_connections,sidekey_head,sidekey_integrations,sidekey_keys,sidekey_oauth_states,sidekey_schema_migrations,sidekey_webhook_outbox"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM sidekey_schema_migrations")
            .trim(),
        sidekey::store::postgres::schema::MIGRATIONS
            .len()
            .to_string()
    );
    // A schema newer than this binary knows is refused, not served.
    pg.psql("INSERT INTO sidekey_schema_migrations (version) VALUES (999)");
    let (code, _, err) = support::sidekey::run_cli(&["migrate", &url], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("newer than this sidekey knows"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_then_back() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let b = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u1",
               "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.proxy(&b.url(""), "/x", "u1", "gh").await.status != 200 {
        assert!(Instant::now() < deadline, "not propagated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Load on both replicas while the database goes away and comes back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for base in [a.url(""), b.url("")] {
        let (c, stop, failed, served) = (c.clone(), stop.clone(), failed.clone(), served.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let res = c.proxy(&base, "/x", "u1", "gh").await;
                if res.status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    if failed.fetch_add(1, Ordering::SeqCst) == 0 {
                        eprintln!("first failure on {base}: {} {}", res.status, res.text());
                    }
                }
            }
        }));
    }
    // u1 is in both replicas' connection caches (read on first use) before the database stops.
    for r in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cached(&c, r).await < 1 {
            assert!(Instant::now() < deadline, "u1 was not cached");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A write cannot be made durable: 503 store_unavailable, nothing applied locally.
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u2",
               "credentials": {"type": "API_KEY", "apiKey": "k2"}}),
    )
    .await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.error_code(), "store_unavailable", "{}", res.text());
    // u2 is not in A's connection cache (it was never written): reading it needs the store.
    let res = c.proxy(&a.url(""), "/x", "u2", "gh").await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.error_code(), "store_unavailable", "{}", res.text());
    pg.restart();
    // Writes succeed again without a restart of sidekey, and reach the other replica.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = call(
            &c,
            &a.url(""),
            "POST",
            "/connections",
            json!({"provider_config_key": "gh", "connection_id": "u2",
                   "credentials": {"type": "API_KEY", "apiKey": "k2"}}),
        )
        .await;
        if res.status == 201 {
            break;
        }
        assert_eq!(res.status, 503, "{}", res.text());
        assert!(Instant::now() < deadline, "writes did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.proxy(&b.url(""), "/x", "u2", "gh").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the other replica did not resynchronise"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("load task");
    }
    println!(
        "through the outage: {} proxied requests served, {} failed",
        served.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "a proxied request on a known connection failed"
    );
    assert!(served.load(Ordering::SeqCst) > 0);
}

#[test]
fn import_and_export_round_trip_sealed() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = providers("http://127.0.0.1:9", "http://127.0.0.1:9");
    std::fs::write(dir.path().join("providers.yaml"), &providers).expect("write");
    let vault = format!(
        "secret_keys:\n  - {{sha256: \"{}\", label: app, scopes: [proxy]}}\nintegrations:\n  - {{unique_key: gh, provider: hdr}}\n  - {{unique_key: o, provider: oa, credentials: {{type: OAUTH2, oauth_client_id: cid, oauth_client_secret: client-secret-xyz}}}}\nconnections:\n  - {{connection_id: u1, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: {SECRET}}}, metadata: {{plan: pro}}}}\n  - {{connection_id: u2, provider_config_key: o, credentials: {{type: OAUTH2, access_token: at-x, refresh_token: rt-secret-x}}}}\n",
        "ab".repeat(32)
    );
    std::fs::write(dir.path().join("vault.yaml"), &vault).expect("write");
    let url = format!("--store={}", pg.url());
    let env = [("SIDEKEY_ENCRYPTION_KEY", KEY)];
    let (code, out, err) = support::sidekey::run_cli_env(
        &[
            "store",
            "import",
            "--from",
            "vault.yaml",
            "--providers",
            "providers.yaml",
            &url,
        ],
        dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("imported 1 caller key(s), 2 integration(s), 2 connection(s)"),
        "{out}"
    );
    let dump = pg.dump();
    for secret in [SECRET, "client-secret-xyz", "rt-secret-x", "at-x"] {
        assert!(!dump.contains(secret), "{secret} in pg_dump");
    }
    let (code, out, err) = support::sidekey::run_cli_env(
        &[
            "store",
            "export",
            "--to",
            "out.yaml",
            "--providers",
            "providers.yaml",
            &url,
        ],
        dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("exported 2 integration(s), 2 connection(s)"),
        "{out}"
    );
    let exported = std::fs::read_to_string(dir.path().join("out.yaml")).expect("read");
    assert!(
        !exported.contains(SECRET) && exported.contains("enc:v1:"),
        "{exported}"
    );
    // The exported vault is a valid, sealed vault with the same records.
    let (code, out, err) = support::sidekey::run_cli_env(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "out.yaml",
        ],
        dir.path(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok: 2 integrations, 2 connections, 1 caller keys"),
        "{out}"
    );
    // Without the key, the store's sealed records do not open: refused, nothing written.
    let (code, _, err) = support::sidekey::run_cli(
        &[
            "store",
            "import",
            "--from",
            "vault.yaml",
            "--providers",
            "providers.yaml",
            &url,
        ],
        dir.path(),
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("SIDEKEY_ENCRYPTION_KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_tls_with_extra_ca() {
    let ca = support::ca::TestCa::new();
    let cert = ca.server_cert(&["127.0.0.1"]);
    let pg = Pg::start_tls(&cert.cert_pem, &cert.key_pem);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca_dir.path().join("ca.pem");
    ca.write_pem(&ca_path);
    let up = Upstream::start(ok_json()).await;
    let a = sidekey(&providers(&up.url(""), &up.url("")), "")
        .arg(format!("--store={}?sslmode=verify-full", pg.url()))
        .arg(format!("--extra-ca={}", ca_path.display()))
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .start();
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Every connection sidekey holds (the pool's and the LISTEN one) is TLS.
    let plain = pg.psql(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'sidekey' AND NOT s.ssl",
    );
    let tls = pg.psql(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'sidekey' AND s.ssl",
    );
    assert_eq!(plain.trim(), "0");
    assert!(tls.trim().parse::<u32>().expect("count") >= 2, "{tls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_refresh_is_taken_over() {
    let pg = Pg::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    // Asynchronous, so the hanging call does not hold one of the test's runtime threads.
    let up = Upstream::start_raw(Arc::new(move |r: http::Request<hyper::body::Incoming>| {
        let c2 = c2.clone();
        Box::pin(async move {
            if r.uri().path() == "/oauth/token" {
                let n = c2.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    // The first holder's call hangs; it is killed before any answer, and this
                    // provider rotates only on an answered call.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    return reply(503, "{}");
                }
                let mut res = reply(
                    200,
                    json!({"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 3600})
                        .to_string(),
                );
                res.headers_mut()
                    .insert("content-type", "application/json".parse().expect("value"));
                return res;
            }
            let ok = r
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == b"Bearer at-2");
            reply(if ok { 200 } else { 401 }, "{}")
        })
    }))
    .await;
    let p = providers(&up.url(""), &up.url(""));
    let mut a = replica(&pg, &p);
    let b = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &b.url(""),
        "POST",
        "/integrations",
        json!({"provider": "oa", "unique_key": "o",
               "credentials": {"type": "OAUTH2", "client_id": "cid", "client_secret": "csecret"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &b.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "o", "connection_id": "u",
               "credentials": {"type": "OAUTH2", "access_token": "at-1", "refresh_token": "rt-1",
                               "expires_at": "2020-01-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lists(&c, &a.url(""), "u").await {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A takes the lease and hangs in the token call; B's request waits for the lease.
    let (ca, abase) = (c.clone(), a.url(""));
    let on_a = tokio::spawn(async move {
        let headers = support::client::proxy_headers("u", "o");
        ca.send_result("GET", &format!("{abase}/proxy/x"), &headers, Bytes::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "A is in its token call");
    let (cb, bbase) = (c.clone(), b.url(""));
    let started = Instant::now();
    let on_b = tokio::spawn(async move { cb.proxy(&bbase, "/x", "u", "o").await.status });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if calls.load(Ordering::SeqCst) != 1 {
        for (n, r) in [("A", &a), ("B", &b)] {
            for l in r
                .logs()
                .lines()
                .filter(|l| l.contains("oauth") || l.contains("lease"))
            {
                eprintln!("{n}: {l}");
            }
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "B waits for A's lease");
    a.signal("KILL");
    let status = on_b.await.expect("task");
    assert_eq!(status, 200, "B took the lease over and refreshed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let _ = on_a.await;
    let _ = a.wait_exit(Duration::from_secs(5));
    let res = call(
        &c,
        &b.url(""),
        "GET",
        "/connections/u?provider_config_key=o&refresh_token=true",
        Value::Null,
    )
    .await;
    assert_eq!(
        res.json()["credentials"]["refresh_token"],
        "rt-2",
        "{}",
        res.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_pruned_log_reloads_whole() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let b = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&c, &b.url(""), "GET", "/integrations/gh", Value::Null)
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "not propagated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B is frozen while A writes and the log loses those changes (as pruning would). The
    // write is too large to ride in the notification, so B must read the log for it.
    b.signal("STOP");
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u1",
               "credentials": {"type": "API_KEY", "apiKey": SECRET},
               "metadata": {"notes": "n".repeat(9000)}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    pg.psql("DELETE FROM sidekey_changes");
    b.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.proxy(&b.url(""), "/x", "u1", "gh").await.status != 200 {
        assert!(Instant::now() < deadline, "B did not serve u1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B may serve u1 first by reading it on use (a cache miss); the resynchronisation from
    // the pruned log happens beside that.
    while !b.logs().contains("loading it whole") {
        assert!(
            Instant::now() < deadline,
            "B did not resynchronise: {}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start-up over a store of many connections (loaded whole, for now): the time from spawn to
/// serving, and the peak RSS. `FLEET_LOAD_N=100000 cargo test --test fleet load_many --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn load_many_connections() {
    let n: u64 = std::env::var("FLEET_LOAD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pg = Pg::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("--store={}", pg.url());
    let (code, out, err) = support::sidekey::run_cli(&["migrate", &url], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    pg.psql(
        "INSERT INTO sidekey_integrations VALUES ('gh', '{\"unique_key\":\"gh\",\"provider\":\"hdr\"}', 1)",
    );
    pg.psql(&format!(
        "INSERT INTO sidekey_connections SELECT 'gh', 'c' || g, g,
           jsonb_build_object('connection_id', 'c' || g, 'provider_config_key', 'gh',
             'credentials', jsonb_build_object('type', 'API_KEY', 'apiKey', 'key-' || g)), 1
         FROM generate_series(1, {n}) g"
    ));
    pg.psql(&format!("UPDATE sidekey_head SET seq = 1, version = {n}"));
    let started = Instant::now();
    let sk = sidekey(&providers("http://127.0.0.1:9", "http://127.0.0.1:9"), "")
        .arg(url)
        .arg("--allow-plaintext-store")
        .start();
    let elapsed = started.elapsed();
    assert!(
        sk.logs().contains(&format!("\"connections\":{n}")),
        "{}",
        sk.logs()
    );
    let (pg_rss, pg_time) = (sk.peak_rss_kib(), elapsed);
    drop(sk);
    // Baseline in the same minute: the same records from a vault file.
    let mut vault =
        String::from("integrations:\n  - {unique_key: gh, provider: hdr}\nconnections:\n");
    for g in 1..=n {
        vault.push_str(&format!(
            "  - {{connection_id: c{g}, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: key-{g}}}}}\n"
        ));
    }
    let started = Instant::now();
    let sk = sidekey(
        &providers("http://127.0.0.1:9", "http://127.0.0.1:9"),
        &vault,
    )
    .start();
    let (file_rss, file_time) = (sk.peak_rss_kib(), started.elapsed());
    println!(
        "{n} connections: PostgreSQL store serving after {:.2} s, peak RSS {} MiB; vault file \
         (baseline) {:.2} s, {} MiB; ratio time {:.2} x, peak RSS {:.2} x",
        pg_time.as_secs_f64(),
        pg_rss / 1024,
        file_time.as_secs_f64(),
        file_rss / 1024,
        pg_time.as_secs_f64() / file_time.as_secs_f64(),
        pg_rss as f64 / file_rss as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_store_is_loaded() {
    let pg = Pg::start();
    pg.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("providers.yaml"),
        providers("http://127.0.0.1:9", "http://127.0.0.1:9"),
    )
    .expect("write");
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    };
    let (proxy, admin) = (port(()), port(()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args([
            "serve".to_string(),
            format!("--listen=127.0.0.1:{proxy}"),
            format!("--admin-listen=127.0.0.1:{admin}"),
            format!("--store={}", pg.url()),
            "--providers=providers.yaml".into(),
        ])
        .current_dir(dir.path())
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .env("SIDEKEY_SECRET_KEY", "test-caller-key-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let c = TestClient::http1();
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let get = |p: String| {
        let c = c.clone();
        async move { c.send_result("GET", &p, &[], Bytes::new()).await }
    };
    // The database is down: alive, not ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(url("/live")).await != Some(200) {
        assert!(Instant::now() < deadline, "no /live while loading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(url("/ready")).await, Some(503));
    // SIGTERM while waiting for the database ends the process (exit 0), not the wait.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not stop a loading sidekey"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args([
            "serve".to_string(),
            format!("--listen=127.0.0.1:{proxy}"),
            format!("--admin-listen=127.0.0.1:{admin}"),
            format!("--store={}", pg.url()),
            "--providers=providers.yaml".into(),
        ])
        .current_dir(dir.path())
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .env("SIDEKEY_SECRET_KEY", "test-caller-key-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(url("/live")).await != Some(200) {
        assert!(Instant::now() < deadline, "no /live while loading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(url("/ready")).await, Some(503));
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(url("/ready")).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never ready after the database came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_every_replica_all_commit() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let replicas = [replica(&pg, &p), replica(&pg, &p), replica(&pg, &p)];
    let c = TestClient::http1();
    let res = call(
        &c,
        &replicas[0].url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Writers on every replica at once: each commit finds the others' first and is applied
    // again on top of them; none may be refused. Baseline: the same writers on one replica.
    async fn burst(c: &TestClient, bases: &[String], tag: &str) -> (Duration, Vec<u16>) {
        const WRITERS: usize = 12;
        const EACH: usize = 25;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (c, base, tag) = (c.clone(), bases[w % bases.len()].clone(), tag.to_string());
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..EACH {
                    let res = call(
                        &c,
                        &base,
                        "POST",
                        "/connections",
                        json!({"provider_config_key": "gh", "connection_id": format!("{tag}-{w}-{i}"),
                               "credentials": {"type": "API_KEY", "apiKey": "k"}}),
                    )
                    .await;
                    statuses.push(res.status.as_u16());
                }
                statuses
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        (started.elapsed(), all)
    }
    let one = [replicas[0].url("")];
    let (t1, s1) = burst(&c, &one, "one").await;
    let three: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let (t3, s3) = burst(&c, &three, "three").await;
    let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "300 writes by 12 writers: on one replica {:.0}/s, spread over three {:.0}/s (ratio {:.2} x)",
        rate(s1.len(), t1),
        rate(s3.len(), t3),
        rate(s3.len(), t3) / rate(s1.len(), t1)
    );
    assert!(s1.iter().all(|s| *s == 201), "{s1:?}");
    assert!(s3.iter().all(|s| *s == 201), "{s3:?}");
    // And every replica ends with all 600.
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let res = call(&c, &r.url(""), "GET", "/connections", Value::Null).await;
            let n = res.json()["connections"].as_array().map_or(0, Vec::len);
            if n == 600 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} connections on {}",
                r.url("")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A replica with a small `--connection-cache` starts with no connection in memory, reads each
/// on first use, keeps at most its bound, and still serves, lists, updates and deletes every
/// connection of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_cache_reads_connections_on_use() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    for i in 0..8 {
        let res = call(
            &c,
            &a.url(""),
            "POST",
            "/connections",
            json!({"provider_config_key": "gh", "connection_id": format!("u{i}"),
                   "credentials": {"type": "API_KEY", "apiKey": format!("key-{i}")}}),
        )
        .await;
        assert_eq!(res.status, 201, "{}", res.text());
    }
    let b = replica_with(&pg, &p, &["--connection-cache", "4"]);
    assert!(
        b.logs().contains(r#""connections":0,"connection_cache":4"#),
        "no connection is loaded at start: {}",
        b.logs()
    );
    // Every connection is served, twice, with its own credential, though at most four stay.
    for round in 0..2 {
        for i in 0..8 {
            let res = c.proxy(&b.url(""), "/x", &format!("u{i}"), "gh").await;
            assert_eq!(res.status, 200, "round {round} u{i}: {}", res.text());
        }
    }
    let auths: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    let want: Vec<String> = (0..2)
        .flat_map(|_| (0..8).map(|i| format!("Bearer key-{i}")))
        .collect();
    assert_eq!(auths, want);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = c
            .send("GET", &b.admin_url("/metrics"), &[], Bytes::new())
            .await
            .text();
        let held = cached(&c, &b).await;
        if held <= 4 && m.contains("sidekey_connection_cache_evictions_total") {
            assert!(
                m.contains(r#"sidekey_connection_cache_loads_total{result="found"}"#),
                "{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the cache holds {held}: {m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not in the store either: 404, as over a whole vault.
    let res = c.proxy(&b.url(""), "/x", "nobody", "gh").await;
    assert_eq!(res.status, 404, "{}", res.text());
    assert_eq!(res.error_code(), "unknown_connection");
    // An integration.app-style selector finds an uncached connection by its id.
    let res = c
        .send(
            "GET",
            &b.url("/connections/u5/proxy/x"),
            &[("authorization", AUTH)],
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // The list comes from the store: all eight, paged.
    let res = call(
        &c,
        &b.url(""),
        "GET",
        "/connections?limit=5&page=1",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["connections"].as_array().map(Vec::len), Some(3));
    // Writes on connections B does not hold: read first, then written as usual.
    let res = call(
        &c,
        &b.url(""),
        "PATCH",
        "/connections/metadata",
        json!({"provider_config_key": "gh", "connection_id": ["u1", "u2", "u3"],
               "metadata": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Written to the store: A, which holds u3, gets it by notification.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = call(
            &c,
            &a.url(""),
            "GET",
            "/connections/u3?provider_config_key=gh",
            Value::Null,
        )
        .await;
        if res.json()["metadata"]["plan"] == "pro" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", res.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A credential changed through A reaches B whether B holds the connection or not.
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u7",
               "credentials": {"type": "API_KEY", "apiKey": "key-7b"}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = up.requests().len();
        assert_eq!(c.proxy(&b.url(""), "/x", "u7", "gh").await.status, 200);
        let got = up.requests()[before..]
            .iter()
            .filter_map(|r| r.header("authorization").map(str::to_string))
            .next();
        if got.as_deref() == Some("Bearer key-7b") {
            break;
        }
        assert!(Instant::now() < deadline, "B kept the old credential");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deleting the integration deletes its connections in the store, cached anywhere or not.
    let res = call(&c, &b.url(""), "DELETE", "/integrations/gh", Value::Null).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        pg.psql("SELECT count(*) FROM sidekey_connections").trim(),
        "0"
    );
}

/// The issue's scale figures, with the bounded cache: a store of `FLEET_SCALE_N` connections
/// (1 000 000 by default, sealed, written with `COPY`), a working set of `FLEET_SCALE_WORK`
/// (10 000): the time from spawn to serving, the RSS once the working set is cached, and what
/// a connection's first request costs against the same request once cached (client-side
/// latency through sidekey to a loopback upstream, sequential requests, p50/p99).
/// `cargo test --release --test fleet scale -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn scale_with_a_bounded_cache() {
    use std::io::Write as _;
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, work) = (
        env("FLEET_SCALE_N", 1_000_000),
        env("FLEET_SCALE_WORK", 10_000),
    );
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("--store={}", pg.url());
    let (code, out, err) = support::sidekey::run_cli(&["migrate", &url], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    pg.psql(
        "INSERT INTO sidekey_integrations VALUES ('gh', '{\"unique_key\":\"gh\",\"provider\":\"hdr\"}', 1)",
    );
    // Rows in COPY's text format, each credential sealed as sidekey seals it.
    let key = sidekey::config::sealed::EncryptionKey::parse(KEY).expect("key");
    let csv = dir.path().join("connections.copy");
    let started = Instant::now();
    {
        let f = std::fs::File::create(&csv).expect("create");
        let mut w = std::io::BufWriter::new(f);
        for g in 1..=n {
            let mut rec: sidekey::config::vault::RawConnection = serde_json::from_value(json!({
                "connection_id": format!("c{g}"), "provider_config_key": "gh",
                "credentials": {"type": "API_KEY", "apiKey": format!("key-{g}")},
                "created_at": "2026-01-01T00:00:00.000Z"}))
            .expect("record");
            sidekey::config::sealed::seal_connection(&mut rec, &key).expect("seal");
            let json = serde_json::to_string(&rec)
                .expect("json")
                .replace('\\', "\\\\");
            writeln!(w, "gh\tc{g}\t{g}\t{json}\t1").expect("write");
        }
        w.flush().expect("flush");
    }
    std::fs::set_permissions(&csv, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let _ = std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let generated = started.elapsed();
    let started = Instant::now();
    pg.psql(&format!(
        "\\copy sidekey_connections (provider_config_key, connection_id, version, record, seq) FROM '{}'",
        csv.display()
    ));
    pg.psql("ANALYZE sidekey_connections");
    pg.psql(&format!("UPDATE sidekey_head SET seq = 1, version = {n}"));
    let copied = started.elapsed();
    println!(
        "{n} rows: generated and sealed in {:.1} s, COPY in {:.1} s",
        generated.as_secs_f64(),
        copied.as_secs_f64()
    );
    let started = Instant::now();
    let sk = sidekey(&p, "")
        .arg(url.clone())
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .start();
    let start_time = started.elapsed();
    let peak_at_start = sk.peak_rss_kib();
    let c = TestClient::http1();
    // The working set: ids spread over the whole table.
    let ids: Vec<String> = (0..work)
        .map(|i| format!("c{}", 1 + (i * 7919 + 13) % n))
        .collect();
    let timed = |ids: &[String]| {
        let ids = ids.to_vec();
        let (c, base) = (c.clone(), sk.url(""));
        async move {
            let mut lat = Vec::with_capacity(ids.len());
            for id in &ids {
                let t = Instant::now();
                let res = c.proxy(&base, "/x", id, "gh").await;
                lat.push(t.elapsed());
                assert_eq!(res.status, 200, "{id}: {}", res.text());
            }
            lat.sort();
            lat
        }
    };
    let cold = timed(&ids).await;
    let warm = timed(&ids).await;
    // The floor under a cold read: the same indexed query from here, on other rows (not in
    // PostgreSQL's buffers either), one at a time over one connection.
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let stmt = client
        .prepare(
            "SELECT h.seq, c.version, c.record::text FROM sidekey_head h
             LEFT JOIN sidekey_connections c
               ON c.provider_config_key = $1 AND c.connection_id = $2",
        )
        .await
        .expect("prepare");
    let mut floor = Vec::with_capacity(ids.len());
    for i in 0..work {
        let id = format!("c{}", 1 + (i * 7919 + 5003) % n);
        let t = Instant::now();
        client.query_one(&stmt, &[&"gh", &id]).await.expect("query");
        floor.push(t.elapsed());
    }
    floor.sort();
    // Idle for the allocator to settle, then the resident set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = sk.rss_kib();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start to serving {:.3} s (peak RSS at start {} MiB); after {work} connections used: \
         RSS {:.1} MiB, peak {:.1} MiB",
        start_time.as_secs_f64(),
        peak_at_start / 1024,
        rss as f64 / 1024.0,
        sk.peak_rss_kib() as f64 / 1024.0
    );
    println!(
        "first request p50 {:.3} ms p99 {:.3} ms; cached p50 {:.3} ms p99 {:.3} ms; \
         added by the read: p50 {:.3} ms p99 {:.3} ms; the query alone (baseline): p50 {:.3} ms \
         p99 {:.3} ms",
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.99)),
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99)),
        ms(percentile(&cold, 0.5)) - ms(percentile(&warm, 0.5)),
        ms(percentile(&cold, 0.99)) - ms(percentile(&warm, 0.99)),
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.99)),
    );
}

/// providers.yaml is reloaded in the PostgreSQL mode too: a changed template is used from
/// then on; a file the stored integrations do not compile over is refused and the last good
/// configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_yaml_reloads_over_the_store() {
    let pg = Pg::start();
    let up = Upstream::start(ok_json()).await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let c = TestClient::http1();
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &a.url(""),
        "POST",
        "/connections",
        json!({"provider_config_key": "gh", "connection_id": "u1",
               "credentials": {"type": "API_KEY", "apiKey": "k1"}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let last_auth = |c: TestClient, base: String| {
        let up = &up;
        async move {
            let before = up.requests().len();
            let res = c.proxy(&base, "/x", "u1", "gh").await;
            assert_eq!(res.status, 200, "{}", res.text());
            up.requests()[before..]
                .iter()
                .find_map(|r| r.header("authorization").map(str::to_string))
        }
    };
    assert_eq!(
        last_auth(c.clone(), a.url("")).await.as_deref(),
        Some("Bearer k1")
    );
    let path = a.path("providers.yaml");
    std::fs::write(&path, p.replace("Bearer ${apiKey}", "Token ${apiKey}")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_auth(c.clone(), a.url("")).await.as_deref() != Some("Token k1") {
        assert!(Instant::now() < deadline, "not reloaded: {}", a.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.logs().contains("providers.yaml changed"), "{}", a.logs());
    // Without the provider `hdr`, integration gh does not compile: refused, still serving.
    std::fs::write(&path, "other: {auth_mode: API_KEY, proxy: {base_url: \"http://127.0.0.1:9\", headers: {x: \"${apiKey}\"}}}\n")
        .expect("write");
    assert!(
        a.wait_for_log("providers.yaml not reloaded", Duration::from_secs(10)),
        "{}",
        a.logs()
    );
    assert_eq!(
        last_auth(c.clone(), a.url("")).await.as_deref(),
        Some("Token k1")
    );
}

/// A connection dropped from the cache while its token call is out (here by a providers.yaml
/// reload on SIGHUP, which empties the cache; an eviction does the same): the refreshed token, and the
/// rotated refresh token with it, still reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_token_call_keeps_the_refreshed_token() {
    let pg = Pg::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let up = Upstream::start(Arc::new(move |r: &Recorded| {
        if r.uri.path() == "/oauth/token" {
            // The provider rotates: rt-1 works once, a second use is refused.
            if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                return reply(400, r#"{"error":"invalid_grant"}"#);
            }
            // Out long enough for the reload below (SIGHUP) to happen meanwhile.
            std::thread::sleep(Duration::from_millis(2500));
            let mut res = reply(
                200,
                json!({"access_token": "at-new", "refresh_token": "rt-rotated",
                       "expires_in": 3600, "token_type": "Bearer"})
                .to_string(),
            );
            res.headers_mut()
                .insert("content-type", "application/json".parse().expect("value"));
            return res;
        }
        reply(200, "{}")
    }))
    .await;
    let p = providers(&up.url(""), &up.url(""));
    let a = replica(&pg, &p);
    let c = TestClient::http1();
    for (path, body) in [
        (
            "/integrations",
            json!({"provider": "oa", "unique_key": "o",
                   "credentials": {"type": "OAUTH2", "client_id": "cid", "client_secret": "cs"}}),
        ),
        (
            "/connections",
            json!({"provider_config_key": "o", "connection_id": "x",
                   "credentials": {"type": "OAUTH2", "access_token": "at-old", "refresh_token": "rt-1",
                                   "expires_at": "2020-01-01T00:00:00Z"}}),
        ),
    ] {
        let res = call(&c, &a.url(""), "POST", path, body).await;
        assert!(res.status == 200 || res.status == 201, "{}", res.text());
    }
    let refresh = {
        let (c, base) = (c.clone(), a.url(""));
        tokio::spawn(async move { c.proxy(&base, "/x", "x", "o").await.status })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("HUP");
    assert!(
        a.wait_for_log("providers.yaml changed", Duration::from_secs(2)),
        "the reload did not happen during the token call: {}",
        a.logs()
    );
    assert_eq!(refresh.await.expect("request"), 200);
    let res = call(
        &c,
        &a.url(""),
        "GET",
        "/connections/x?provider_config_key=o&refresh_token=true",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json()["credentials"]["refresh_token"],
        "rt-rotated",
        "{}",
        res.text()
    );
    assert_eq!(res.json()["credentials"]["access_token"], "at-new");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one token call");
}
