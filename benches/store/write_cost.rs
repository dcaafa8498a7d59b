//! Where a file-store write's time and a large vault's memory go, measured piece by piece.
//!
//! For each N (default 10 000 and 100 000; pass others as arguments) it generates the vault
//! of `benches/snapshot.rs` (about 176 bytes a connection, the four credential types), builds
//! the snapshot, and reports:
//! - memory: the process's VmRSS before, with the YAML text, after the build with the text
//!   dropped (the snapshot alone), its VmHWM during the build, and the same for the records
//!   the file store renders from on every commit; plus `size_of` of the types a connection
//!   is made of, so the per-connection figure can be split by type;
//! - time, for the steps one group commit of `store::file::FileStore` repeats whatever its
//!   size: reading and hashing the vault (twice: `refresh`, then `commit`'s own check), one
//!   `Snapshot::with` put, `Snapshot::records`, `serde_yaml_ng::to_string` of them, hashing
//!   the new text, and `atomic_file::write` (temporary file, fsync, rename, fsync of the
//!   directory); then the same commit as the file store makes it now: a stat instead of the
//!   read and hash, and `store::render::write_snapshot` streamed through
//!   `atomic_file::write_with` (plus the render alone, with and without sealing), checking
//!   that the streamed file reads back as the snapshot's records; and a group commit of 16
//!   puts as the file store makes it after the first, spliced by `store::splice` (the old
//!   file's unchanged items copied, 16 rendered), beside the same group rendered whole, plain
//!   and sealed, with the thread's CPU time.
//!
//! `--parts N` instead measures, each in a fresh process, what the building blocks of a
//! snapshot cost per entry: a persistent `Table` (imbl) against a `std` hash map with the same
//! keys and hasher, and a two-entry `serde_json::Map` (the records' `connection_config` and
//! `metadata`); and the peaks of a load per connection: serde_yaml_ng's event list alone
//! (the parse before it streamed), the streaming parse alone, `vault::parse`, `snapshot::build`.
//!
//! Like the binary it uses mimalloc, so the RSS figures are what `sidekey serve` sees.
//! `cargo run --release --example write-cost [N...]`, `… --example write-cost -- --parts 100000`

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::Map;
use sidekey::config::snapshot::{Connection, Credential, Integration};
use sidekey::config::vault::{RawConnection, RawCredentials};
use sidekey::config::{snapshot, BuildOptions, Change, Snapshot, Sources};
use sidekey::secret::Secret;
use sidekey::store::render;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The vault of `benches/snapshot.rs` (kept identical so the figures compare).
fn vault_text(n: usize) -> String {
    let mut v = String::with_capacity(n * 200);
    v.push_str("secret_keys:\n  - {sha256: \"");
    v.push_str(&"ab".repeat(32));
    v.push_str("\"}\nintegrations:\n");
    for p in ["hdr", "qry", "basic", "oauth"] {
        let _ = writeln!(v, "  - {{unique_key: {p}-int, provider: {p}}}");
    }
    v.push_str("connections:\n");
    // `WRITE_COST_KIND=0..3` makes every connection of one kind (header, query, basic, OAuth),
    // to split the per-connection figure by kind.
    let only: Option<usize> = std::env::var("WRITE_COST_KIND")
        .ok()
        .and_then(|k| k.parse().ok());
    for i in 0..n {
        let _ = match only.unwrap_or(i % 4) {
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

/// A field of /proc/self/status in KiB (0 where /proc is not there).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss() -> u64 {
    // Give mimalloc's delayed purge of freed pages time to run.
    std::thread::sleep(Duration::from_millis(300));
    status_kib("VmRSS:")
}

/// Resets VmHWM to the current RSS, so the next reading is the peak of what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This thread's user + system time in clock ticks (1/100 s on Linux; 0 elsewhere).
fn thread_ticks() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            // After the command name, which may hold spaces, in parentheses.
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The median of `runs` timings of `f`, in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn put(id: &str) -> Change {
    Change::PutConnection(
        RawConnection {
            connection_id: id.into(),
            provider_config_key: "qry-int".into(),
            credentials: RawCredentials::ApiKey {
                api_key: Secret::new("rotated"),
            },
            connection_config: Map::new(),
            metadata: Map::new(),
            end_user: None,
            tags: Map::new(),
            webhook_url_override: None,
            created_at: None,
            updated_at: None,
        },
        1,
    )
}

/// RSS per entry of `n` entries made by `make` (kept alive until measured).
fn per_entry<T>(n: usize, make: impl FnOnce(usize) -> T) -> f64 {
    let before = rss();
    let kept = make(n);
    let after = rss();
    black_box(&kept);
    after.saturating_sub(before) as f64 * 1024.0 / n as f64
}

fn sources(n: usize) -> Sources {
    Sources {
        providers_name: "providers.yaml".into(),
        providers: PROVIDERS.into(),
        vault_name: "vault.yaml".into(),
        vault: vault_text(n),
    }
}

/// The compiled connections of the vault of `n`, out of their snapshot.
fn connections(n: usize) -> anyhow::Result<Vec<std::sync::Arc<Connection>>> {
    let snap = snapshot::build(&sources(n), &BuildOptions::default())
        .map_err(|d| anyhow::anyhow!("{} problems, first: {:?}", d.len(), d.first()))?;
    Ok(snap
        .connections
        .values()
        .flat_map(|t| t.values().cloned())
        .collect())
}

fn parts(what: &str, n: usize) -> anyhow::Result<()> {
    let keys = |n: usize| -> Vec<std::sync::Arc<str>> {
        (0..n)
            .map(|i| std::sync::Arc::from(format!("user-{i}")))
            .collect()
    };
    let v = match what {
        "keys" => per_entry(n, keys),
        "imbl" => {
            let k = keys(n);
            per_entry(n, |_| {
                let mut t: snapshot::Table<std::sync::Arc<u64>> = snapshot::Table::default();
                for (i, k) in k.iter().enumerate() {
                    t.insert(k.clone(), std::sync::Arc::new(i as u64));
                }
                t
            })
        }
        "std" => {
            let k = keys(n);
            per_entry(n, |_| {
                let mut t: std::collections::HashMap<
                    std::sync::Arc<str>,
                    std::sync::Arc<u64>,
                    foldhash::fast::RandomState,
                > = Default::default();
                for (i, k) in k.iter().enumerate() {
                    t.insert(k.clone(), std::sync::Arc::new(i as u64));
                }
                t
            })
        }
        "map2" => per_entry(n, |n| {
            (0..n)
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("subdomain".into(), format!("tenant{i}").into());
                    m.insert("tenant".into(), format!("t{i}").into());
                    m
                })
                .collect::<Vec<_>>()
        }),
        // Not in the default list: the snapshot freed after `connections` leaves pages the
        // table reuses, so RSS shows about 0; by construction a leaf entry is 16 bytes.
        "trie" => {
            let conns = connections(n)?;
            per_entry(n, |_| {
                conns
                    .iter()
                    .cloned()
                    .collect::<sidekey::config::table::Connections>()
            })
        }
        // The transient state of a load, as a peak above the text (bytes per connection):
        // serde_yaml_ng's event list alone (the text parsed into `IgnoredAny`: what the
        // vault's parse held before it streamed), the streaming parse alone (each record
        // dropped as it is read), the records collected (`vault::parse`), and a whole
        // `snapshot::build` (which compiles each record as it is read).
        //
        // `main-records` and `main-build` are the load as it was before the parse streamed,
        // reproduced here for a baseline in the same minutes: serde_yaml_ng's `from_str` into
        // `RawVault` (the event list, then every record beside it), then `build_records`.
        "events" | "stream" | "records" | "build" | "main-records" | "main-build" => {
            let src = sources(n);
            let before = rss();
            reset_peak();
            let started = Instant::now();
            match what {
                "events" => {
                    black_box(serde_yaml_ng::from_str::<serde::de::IgnoredAny>(
                        &src.vault,
                    )?);
                }
                "stream" => {
                    black_box(
                        sidekey::config::vault::parse_each("vault.yaml", &src.vault, &mut |r| {
                            drop(black_box(r))
                        })
                        .ok(),
                    );
                }
                "records" => {
                    black_box(sidekey::config::vault::parse("vault.yaml", &src.vault).ok());
                }
                "main-records" => {
                    black_box(serde_yaml_ng::from_str::<sidekey::config::vault::RawVault>(
                        &src.vault,
                    )?);
                }
                "main-build" => {
                    let raw: sidekey::config::vault::RawVault =
                        serde_yaml_ng::from_str(&src.vault)?;
                    let catalog = std::sync::Arc::new(
                        sidekey::config::providers::Catalog::parse(
                            &src.providers_name,
                            &src.providers,
                        )
                        .map_err(|d| anyhow::anyhow!("{d}"))?,
                    );
                    black_box(
                        snapshot::build_records(
                            "vault.yaml",
                            catalog,
                            raw,
                            &BuildOptions::default(),
                        )
                        .ok(),
                    );
                }
                _ => {
                    black_box(snapshot::build(&src, &BuildOptions::default()).ok());
                }
            }
            let took = started.elapsed();
            let peak = status_kib("VmHWM:").saturating_sub(before) as f64 * 1024.0 / n as f64;
            println!("{what} {peak:.0} {:.0}", took.as_secs_f64() * 1e3);
            return Ok(());
        }
        // What the built snapshot keeps per connection once the text and the build's
        // transient state are gone (run with `MIMALLOC_PURGE_DELAY=0` so freed pages leave
        // RSS at once).
        "snapshot" => {
            let before = rss();
            let src = sources(n);
            let snap = snapshot::build(&src, &BuildOptions::default())
                .map_err(|d| anyhow::anyhow!("{} problems, first: {:?}", d.len(), d.first()))?;
            drop(src);
            let after = rss();
            black_box(&snap);
            after.saturating_sub(before) as f64 * 1024.0 / n as f64
        }
        // What is left in RSS after the text alone was made and dropped: the floor of
        // "snapshot" (the allocator may keep some of a freed text's pages).
        "text" => {
            let before = rss();
            drop(black_box(sources(n)));
            let after = rss();
            after.saturating_sub(before) as f64 * 1024.0 / n as f64
        }
        other => anyhow::bail!("unknown part {other}"),
    };
    println!("{what} {v:.0}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--parts") {
        let n: usize = args.get(1).map_or(Ok(100_000), |s| s.parse())?;
        if let Some(what) = args.get(2) {
            return parts(what, n);
        }
        // Each part in a process of its own, so that one's freed pages do not hide another's.
        let me = std::env::current_exe()?;
        println!("| {n} entries of | bytes per entry (RSS) | ms (loads only) |\n|---|---:|---:|");
        for (what, label) in [
            ("keys", "`Arc<str>` key `user-N` alone"),
            (
                "imbl",
                "`snapshot::Table` (imbl) entry: key + `Arc<u64>` value + nodes",
            ),
            (
                "std",
                "`std::collections::HashMap` (foldhash) entry, same key and value",
            ),
            ("map2", "`serde_json::Map` with two short string entries"),
            (
                "events",
                "peak of serde_yaml_ng's event list (parse into `IgnoredAny`), a connection",
            ),
            (
                "stream",
                "peak of the streaming parse alone (`vault::parse_each`, records dropped), a connection",
            ),
            (
                "records",
                "peak of `vault::parse` (every record collected), a connection",
            ),
            (
                "build",
                "peak of `snapshot::build` from the text, a connection",
            ),
            (
                "main-records",
                "before streaming: peak of serde_yaml_ng `from_str::<RawVault>`, a connection",
            ),
            (
                "main-build",
                "before streaming: peak of `from_str` + `build_records`, a connection",
            ),
        ] {
            let out = std::process::Command::new(&me)
                .args(["--parts", &n.to_string(), what])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v = text.split_whitespace().nth(1).unwrap_or("?");
            let ms = text.split_whitespace().nth(2).unwrap_or("");
            println!("| {label} | {v} | {ms} |");
        }
        return Ok(());
    }
    let sizes: Vec<usize> = {
        let a: Vec<usize> = args.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        if a.is_empty() {
            vec![10_000, 100_000]
        } else {
            a
        }
    };
    println!("### size_of (bytes, stack part only; heap data comes on top)\n");
    println!("| type | bytes |\n|---|---:|");
    for (name, size) in [
        ("Connection", std::mem::size_of::<Connection>()),
        ("Credential", std::mem::size_of::<Credential>()),
        ("Integration", std::mem::size_of::<Integration>()),
        ("RawConnection", std::mem::size_of::<RawConnection>()),
        (
            "serde_json::Map",
            std::mem::size_of::<Map<String, serde_json::Value>>(),
        ),
        (
            "serde_json::Value",
            std::mem::size_of::<serde_json::Value>(),
        ),
        (
            "(HeaderName, HeaderValue)",
            std::mem::size_of::<(http::HeaderName, http::HeaderValue)>(),
        ),
        ("Option<String>", std::mem::size_of::<Option<String>>()),
    ] {
        println!("| {name} | {size} |");
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vault.yaml");
    for n in sizes {
        println!("\n### {n} connections\n");
        let base = rss();
        let text = vault_text(n);
        let text_bytes = text.len();
        let with_text = rss();
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault: text,
        };
        reset_peak();
        let t = Instant::now();
        let snap: Snapshot = snapshot::build(&src, &BuildOptions::default())
            .map_err(|d| anyhow::anyhow!("{} problems, first: {:?}", d.len(), d.first()))?;
        let build_ms = t.elapsed().as_secs_f64() * 1e3;
        let build_peak = status_kib("VmHWM:");
        std::fs::write(&path, &src.vault)?;
        drop(src);
        let with_snap = rss();
        reset_peak();
        let records = snap.records();
        let rec_peak = status_kib("VmHWM:");
        let with_records = rss();
        let yaml = serde_yaml_ng::to_string(&records)?;
        drop(records);
        println!("| memory | MiB | per connection |\n|---|---:|---:|");
        let row = |what: &str, kib: u64| {
            println!(
                "| {what} | {:.1} | {:.0} B |",
                mib(kib),
                kib as f64 * 1024.0 / n as f64
            )
        };
        row("process before", base);
        row("YAML text (bytes)", text_bytes as u64 / 1024);
        row("with the YAML text", with_text);
        row(
            "snapshot alone (RSS after build − before)",
            with_snap.saturating_sub(base),
        );
        row(
            "peak during build − before",
            build_peak.saturating_sub(base),
        );
        row(
            "records() of the snapshot (RSS − snapshot)",
            with_records.saturating_sub(with_snap),
        );
        row(
            "peak during records() − before",
            rec_peak.saturating_sub(base),
        );
        row("rendered YAML (bytes)", yaml.len() as u64 / 1024);
        drop(yaml);

        let runs = if n > 50_000 { 5 } else { 11 };
        println!("\n| one group commit's step (median of {runs}) | ms |\n|---|---:|");
        let read = time_ms(runs, || {
            black_box(std::fs::read_to_string(&path).map(|s| hash(&s)).ok());
        });
        println!(
            "| read + hash the vault (done twice a commit: refresh, then commit) | {read:.2} |"
        );
        let mut i = 0usize;
        let with = time_ms(runs, || {
            i += 1;
            black_box(
                snap.with(put(&format!("user-{}", 4 * (i % (n / 4)) + 1)))
                    .ok(),
            );
        });
        println!("| `Snapshot::with` one put (clone + insert) | {with:.3} |");
        let records_ms = time_ms(runs, || {
            black_box(snap.records());
        });
        println!("| `Snapshot::records()` (clone every record, sort) | {records_ms:.2} |");
        let records = snap.records();
        let ser_ms = time_ms(runs, || {
            black_box(serde_yaml_ng::to_string(&records).ok());
        });
        println!("| `serde_yaml_ng::to_string` of the records | {ser_ms:.2} |");
        let yaml = serde_yaml_ng::to_string(&records)?;
        drop(records);
        let hash_ms = time_ms(runs, || {
            black_box(hash(&yaml));
        });
        println!("| hash of the new text | {hash_ms:.2} |");
        let write_ms = time_ms(runs, || {
            black_box(sidekey::atomic_file::write(&path, yaml.as_bytes(), 0o600).ok());
        });
        println!("| `atomic_file::write` (tmp, fsync, rename, dir fsync) | {write_ms:.2} |");
        let total = 2.0 * read + with + records_ms + ser_ms + hash_ms + write_ms;
        println!(
            "| **sum: one group commit (before: records + serde_yaml_ng)** | **{total:.1}** |"
        );

        // The commit as `store::file` makes it now: stat instead of read + hash, the leading
        // comments from the file's head, and the snapshot streamed into the temporary file.
        println!(
            "\n| one group commit's step, streaming renderer (median of {runs}) | ms |\n|---|---:|"
        );
        let stat_ms = time_ms(runs, || {
            black_box(sidekey::atomic_file::FileStamp::read(&path));
        });
        println!("| stat the vault (done twice a commit: refresh, then commit) | {stat_ms:.3} |");
        let render_ms = time_ms(runs, || {
            let mut sink = std::io::BufWriter::new(std::io::sink());
            black_box(render::write_snapshot(&mut sink, "", &snap, None).ok());
        });
        println!(
            "| `store::render::write_snapshot` into a sink (CPU of the render) | {render_ms:.2} |"
        );
        let key = sidekey::config::sealed::EncryptionKey::parse(&"A".repeat(43))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let sealed_ms = time_ms(runs, || {
            let mut sink = std::io::BufWriter::new(std::io::sink());
            black_box(render::write_snapshot(&mut sink, "", &snap, Some(&key)).ok());
        });
        println!("| the same with an encryption key (every secret sealed anew) | {sealed_ms:.2} |");
        let stream_ms = time_ms(runs, || {
            black_box(
                sidekey::atomic_file::write_with(&path, 0o600, |w| {
                    render::write_snapshot(w, "", &snap, None).map_err(std::io::Error::other)
                })
                .ok(),
            );
        });
        println!("| `atomic_file::write_with` streaming it (render, fsync, rename, dir fsync) | {stream_ms:.2} |");
        let new_total = 2.0 * stat_ms + with + stream_ms;
        println!("| **sum: one group commit (now)** | **{new_total:.1}** |");
        // The commit as `store::file` makes it after the first: spliced (`store::splice`), a
        // group of 16 puts of existing connections, plain and sealed, against the full render
        // streamed the same way. Wall time includes the fsyncs; CPU is this thread's user +
        // system time (the kernel's copy counts), from /proc/thread-self/stat over every run.
        println!(
            "\n| a 16-write group commit written through `store::splice::Splicer` (median of {splice_runs}) | wall ms | CPU ms |\n|---|---:|---:|",
            splice_runs = 4 * runs
        );
        for (label, sealed) in [
            ("plain", false),
            ("sealed (`SIDEKEY_ENCRYPTION_KEY`)", true),
        ] {
            let k = sealed.then_some(&key);
            for spliced in [false, true] {
                let mut splicer = sidekey::store::splice::Splicer::new();
                let mut cur = snap.clone();
                cur.generation = 1;
                splicer
                    .write(&path, "", &cur, &[], k)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut walls = Vec::new();
                let mut cpu_ticks = 0;
                let mut how = None;
                for r in 0..4 * runs {
                    let changes: Vec<Change> = (0..16)
                        .map(|j| put(&format!("user-{}", 4 * ((r * 16 + j) % (n / 4)) + 1)))
                        .collect();
                    let mut next = cur.clone();
                    for ch in &changes {
                        next = next
                            .with(ch.clone())
                            .map_err(|d| anyhow::anyhow!("{d:?}"))?;
                    }
                    next.generation = cur.generation + 1;
                    if !spliced {
                        splicer.forget();
                    }
                    let (t0, c0) = (Instant::now(), thread_ticks());
                    let (_, w) = splicer
                        .write(&path, "", &next, &changes, k)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    walls.push(t0.elapsed().as_secs_f64() * 1e3);
                    cpu_ticks += thread_ticks() - c0;
                    how = Some(w);
                    cur = next;
                }
                walls.sort_by(f64::total_cmp);
                let cpu_ms = cpu_ticks as f64 * 10.0 / walls.len() as f64;
                println!(
                    "| {label}, {} ({how:?}) | {:.2} | {cpu_ms:.2} |",
                    if spliced { "spliced" } else { "rendered whole" },
                    walls[walls.len() / 2]
                );
                // The spliced file reads back as the snapshot, sealed or not.
                let text = std::fs::read_to_string(&path)?;
                let mut back = sidekey::config::vault::parse("vault.yaml", &text)
                    .map_err(|d| anyhow::anyhow!("{d}"))?;
                sidekey::config::sealed::open_vault(&mut back, k)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                back.connections.sort_by(|a, b| {
                    (&a.provider_config_key, &a.connection_id)
                        .cmp(&(&b.provider_config_key, &b.connection_id))
                });
                let mut expect = cur.records();
                expect.secret_keys = back.secret_keys.clone();
                anyhow::ensure!(back == expect, "the spliced vault does not read back");
                if spliced {
                    println!(
                        "| (its index: {} bytes, {:.1} a connection) | | |",
                        splicer.index_bytes(),
                        splicer.index_bytes() as f64 / n as f64
                    );
                }
            }
        }
        std::fs::write(&path, "")?;
        sidekey::atomic_file::write_with(&path, 0o600, |w| {
            render::write_snapshot(w, "", &snap, None).map_err(std::io::Error::other)
        })?;

        // What was written reads back as the snapshot's records.
        let text = std::fs::read_to_string(&path)?;
        let back = sidekey::config::vault::parse("vault.yaml", &text)
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        let mut expect = snap.records();
        expect.secret_keys = back.secret_keys.clone();
        anyhow::ensure!(
            back == expect,
            "the streamed vault does not read back as the records"
        );
        println!(
            "\nA group of 16 writes (16 writers, one request in flight each) then commits at most \
             {:.0} writes/s on one core before, {:.0} now; the streamed file is {} bytes against \
             serde_yaml_ng's {}; build (parse + compile) took {build_ms:.0} ms.",
            16.0 * 1e3 / total,
            16.0 * 1e3 / new_total,
            text.len(),
            yaml.len(),
        );
        drop(snap);
    }
    Ok(())
}
