//! Configuration-file hardening (issue 15): hostile YAML (deep nesting, alias chains and
//! expansion), files that are not regular files or too large, the vault text the removed split
//! parser read differently from YAML, URL user info in messages, and empty files on reload.
//! `sidekey check` runs as the real binary with a hang guard; reloads run against the real
//! binary serving a loopback upstream.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::TestClient;
use support::sidekey::sidekey;
use support::upstream::{reply, Upstream};

/// A bound on how long `sidekey check` may take before the test calls it hung. Far above what a
/// loaded machine needs for these small files; before the fix each of them ran past 40 s.
const HANG: Duration = Duration::from_secs(60);

/// Runs `sidekey check` on these files; (exit code, stdout + stderr). Kills and fails on a hang.
fn check(dir: &Path, providers: Option<&Path>, vault: &Path) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey"));
    cmd.arg("check")
        .arg(format!("--vault={}", vault.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = providers {
        cmd.arg(format!("--providers={}", p.display()));
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDEKEY_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd.spawn().expect("spawn sidekey check");
    let pid = child.id();
    // Collect the output on a thread (a full pipe must not stall the child) and wait for it
    // with a bound; on a hang, end this child by its pid.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(HANG) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("sidekey check hung for {HANG:?}");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const EMPTY_VAULT: &str = "secret_keys: []\nintegrations: []\nconnections: []\n";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn deeply_nested_yaml_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok_vault = write(dir.path(), "ok.yaml", EMPTY_VAULT);
    let cases = [
        // (file, text, as providers?)
        (
            "vault.yaml",
            format!("connections: {}\n", "[".repeat(100_000)),
            false,
        ),
        ("providers.yaml", "{a: ".repeat(100_000), true),
        (
            "providers.yaml",
            format!("p: {}x{}\n", "[ \"]\", ".repeat(50_000), "]".repeat(50_000)),
            true,
        ),
    ];
    for (name, text, as_providers) in cases {
        let path = write(dir.path(), name, &text);
        let (code, out) = if as_providers {
            check(dir.path(), Some(&path), &ok_vault)
        } else {
            check(dir.path(), None, &path)
        };
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("{name}: line 1: nested deeper than 64 levels")),
            "{out}"
        );
    }
}

#[test]
fn alias_chains_and_expansion_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = write(dir.path(), "vault.yaml", EMPTY_VAULT);

    // providers.yaml `alias:` chain 5 000 long: every provider resolved it in full.
    let mut chain = String::from(
        "p0: {auth_mode: API_KEY, proxy: {base_url: \"https://x.example\", headers: {x: \"${apiKey}\"}}}\n",
    );
    for i in 1..5000 {
        chain.push_str(&format!("p{i}: {{alias: p{}}}\n", i - 1));
    }
    let providers = write(dir.path(), "providers.yaml", &chain);
    let (code, out) = check(dir.path(), Some(&providers), &vault);
    assert_eq!(code, 0, "only warnings: nobody uses these providers\n{out}");
    assert!(
        out.contains("providers.yaml: p4999: warning: alias chain longer than 16 steps"),
        "{out}"
    );
    assert!(
        !out.contains("providers.yaml: p16: "),
        "chains up to 16 steps compile: {out}"
    );

    // YAML aliases that replay a 10 000-item list 10 000 times.
    let list: String = (0..10_000).map(|i| format!("{i}, ")).collect();
    let text = format!("a: &a [{list}]\nb: [{}]\n", "*a, ".repeat(10_000));
    let providers = write(dir.path(), "providers.yaml", &text);
    let (code, out) = check(dir.path(), Some(&providers), &vault);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("providers.yaml: line 2: aliases stand for more than 16 MiB of text"),
        "{out}"
    );
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // A FIFO nobody writes: before, `check` blocked forever in open().
    let (code, out) = check(dir.path(), None, &fifo);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fifo.yaml: cannot read: not a regular file (a FIFO)"),
        "{out}"
    );
    let (code, out) = check(dir.path(), None, dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a regular file (a directory)"), "{out}");
    let ok = write(dir.path(), "ok.yaml", EMPTY_VAULT);
    let (code, out) = check(dir.path(), Some(Path::new("/dev/zero")), &ok);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/dev/zero: cannot read: not a regular file (a device)"),
        "{out}"
    );

    // The state file goes through the same reader.
    let e = sidekey::credstore::CredStore::open(Some(fifo)).expect_err("refused");
    assert!(e.to_string().contains("not a regular file (a FIFO)"), "{e}");
}

#[test]
fn files_above_the_size_cap_are_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("vault.yaml");
    // Sparse: 65 MiB of nothing on disk.
    let f = std::fs::File::create(&big).expect("create");
    f.set_len((64 << 20) + 1).expect("set_len");
    drop(f);
    let (code, out) = check(dir.path(), None, &big);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("vault.yaml: cannot read: 67108865 bytes is more than the limit of 64 MiB"),
        "{out}"
    );
    let small = write(dir.path(), "small.yaml", "a: 1\n");
    let e = sidekey::config::limits::read_file_limited(&small, 4).expect_err("refused");
    assert!(e.to_string().contains("more than the limit"), "{e}");
}

/// A vault above 1 MiB whose `connections:` lines sit inside a multi-line quoted `label`. YAML
/// (serde_yaml_ng, and PyYAML) reads them as the label's text; the removed split parser cut the
/// list out and returned 11 404 connections, `smuggled` first.
fn smuggling_vault() -> String {
    let mut s = String::from(
        "secret_keys:\n  - sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n    label: \"note\nconnections:\n  - connection_id: smuggled\n    provider_config_key: i\n    credentials: {type: API_KEY, apiKey: k}\n",
    );
    let mut i = 0;
    while s.len() < (1 << 20) + 1000 {
        s.push_str(&format!(
            "  - {{connection_id: c{i}, provider_config_key: i, credentials: {{type: API_KEY, apiKey: k}}}}\n"
        ));
        i += 1;
    }
    s.push_str("end\"\nintegrations: [{unique_key: i, provider: p}]\n");
    s
}

#[test]
fn a_large_vault_means_what_yaml_says() {
    use sidekey::config::vault;
    let text = smuggling_vault();
    let parsed = vault::parse("vault.yaml", &text).expect("valid YAML");
    let ordinary: vault::RawVault = serde_yaml_ng::from_str(&text).expect("valid YAML");
    assert_eq!(parsed.connections.len(), ordinary.connections.len());
    assert!(parsed.connections.is_empty(), "every item is label text");
    let label = parsed.secret_keys[0].label.as_deref().expect("label");
    assert!(
        label.contains("connection_id: smuggled"),
        "{}",
        &label[..80]
    );

    // A `|` block scalar holding item lines is a string too.
    let mut text = String::from(
        "integrations:\n  - unique_key: i\n    provider: p\n    display_name: |\n      x\n      - connection_id: smuggled\n        provider_config_key: i\n        credentials: {type: API_KEY, apiKey: k}\nconnections:\n",
    );
    let mut i = 0;
    while text.len() < (1 << 20) + 1000 {
        text.push_str(&format!(
            "  - {{connection_id: c{i}, provider_config_key: i, credentials: {{type: API_KEY, apiKey: k}}}}\n"
        ));
        i += 1;
    }
    let parsed = vault::parse("vault.yaml", &text).expect("valid YAML");
    assert_eq!(parsed.connections.len(), i);
    assert!(parsed
        .connections
        .iter()
        .all(|c| c.connection_id != "smuggled"));
    assert!(parsed.integrations[0]
        .display_name
        .as_deref()
        .is_some_and(|d| d.contains("- connection_id: smuggled")));
}

const PASSWORD: &str = "PASSWORD-4f7a1c";

#[test]
fn check_never_prints_url_user_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = write(
        dir.path(),
        "providers.yaml",
        &format!(
            "p: {{auth_mode: API_KEY, proxy: {{base_url: \"https://u:{PASSWORD}@api.example\", headers: {{x: \"${{apiKey}}\"}}}}}}\nq: {{auth_mode: API_KEY, proxy: {{base_url: \"ftp://u:{PASSWORD}@h.example/\", headers: {{x: \"${{apiKey}}\"}}}}}}\nr: {{auth_mode: API_KEY, proxy: {{headers: {{x: \"${{apiKey}}\"}}}}}}\n"
        ),
    );
    let vault = write(
        dir.path(),
        "vault.yaml",
        &format!(
            "integrations:\n  - {{unique_key: p, provider: p}}\n  - {{unique_key: q, provider: q}}\n  - {{unique_key: r, provider: r}}\nconnections:\n  - {{connection_id: a, provider_config_key: p, credentials: {{type: API_KEY, apiKey: k}}}}\n  - {{connection_id: b, provider_config_key: q, credentials: {{type: API_KEY, apiKey: k}}}}\n  - {{connection_id: c, provider_config_key: r, credentials: {{type: API_KEY, apiKey: k}}, connection_config: {{baseUrl: \"http://{PASSWORD}@h.example\"}}}}\n"
        ),
    );
    let (code, out) = check(dir.path(), Some(&providers), &vault);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    for want in [
        "vault.yaml: connections[0].connection_config: base URL: `https://***@api.example`: user info in a base URL is not supported",
        "vault.yaml: connections[1].connection_config: base URL: `ftp://***@h.example/`: only http and https",
        "vault.yaml: connections[2].connection_config: base URL: `http://***@h.example`: user info",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

async fn echo_upstream() -> Upstream {
    Upstream::start(Arc::new(|r| {
        reply(200, r.header("x-key").unwrap_or("").to_string())
    }))
    .await
}

fn providers_for(base: &str) -> String {
    format!(
        "echo:\n  auth_mode: API_KEY\n  proxy: {{base_url: \"{base}/api\", headers: {{x-key: \"${{apiKey}}\"}}}}\n"
    )
}

fn vault_with(key: &str) -> String {
    format!(
        "integrations:\n  - {{unique_key: echo, provider: echo}}\nconnections:\n  - {{connection_id: c1, provider_config_key: echo, credentials: {{type: API_KEY, apiKey: \"{key}\"}}}}\n"
    )
}

fn count(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

const POSTPONED: &str = "configuration reload postponed";

#[tokio::test]
async fn an_emptied_vault_keeps_the_last_good_one_serving() {
    let up = echo_upstream().await;
    let sk = sidekey(&providers_for(&up.url("")), &vault_with("key-one"))
        .arg("--reload-settle=50ms")
        .start();
    let c = TestClient::default();
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "c1", "echo").await.text(),
        "key-one"
    );
    let vault = sk.path("vault.yaml");
    // An editor truncated the file (0 bytes), then one that left only comments.
    for (round, text) in ["", "# saving…\n\n   \n"].into_iter().enumerate() {
        std::fs::write(&vault, text).expect("truncate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&sk.logs(), POSTPONED) <= round {
            assert!(
                Instant::now() < deadline,
                "no postponed reload:\n{}",
                sk.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let res = c.proxy(&sk.url(""), "/x", "c1", "echo").await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        assert_eq!(res.text(), "key-one", "round {round}");
    }
    assert!(sk.logs().contains("vault.yaml is empty"), "{}", sk.logs());
    assert!(
        !sk.logs().contains("configuration reloaded"),
        "{}",
        sk.logs()
    );

    // Content again: picked up as usual.
    std::fs::write(&vault, vault_with("key-two")).expect("write");
    assert!(
        sk.wait_for_log("configuration reloaded", Duration::from_secs(30)),
        "{}",
        sk.logs()
    );
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "c1", "echo").await.text(),
        "key-two"
    );
}

#[tokio::test]
async fn a_first_start_with_an_empty_vault_still_serves() {
    let up = echo_upstream().await;
    let sk = sidekey(&providers_for(&up.url("")), "")
        .arg("--reload-settle=50ms")
        .start();
    let c = TestClient::default();
    let res = c.proxy(&sk.url(""), "/x", "c1", "echo").await;
    assert_eq!(res.status, 404, "{}", res.text());
    // An empty vault that stays empty is not "emptied": content arrives and is loaded.
    std::fs::write(sk.path("vault.yaml"), vault_with("key-one")).expect("write");
    assert!(
        sk.wait_for_log("configuration reloaded", Duration::from_secs(30)),
        "{}",
        sk.logs()
    );
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "c1", "echo").await.text(),
        "key-one"
    );
}

#[tokio::test]
async fn reload_logs_and_override_errors_never_show_url_user_info() {
    let up = echo_upstream().await;
    let sk = sidekey(&providers_for(&up.url("")), &vault_with("key-one"))
        .arg("--reload-settle=50ms")
        .arg("--base-url-override=any")
        .start();
    let bad = format!(
        "integrations:\n  - {{unique_key: echo, provider: echo}}\nconnections:\n  - {{connection_id: c1, provider_config_key: echo, credentials: {{type: API_KEY, apiKey: k}}, connection_config: {{baseUrl: \"https://user:{PASSWORD}@api.example\"}}}}\n"
    );
    std::fs::write(sk.path("vault.yaml"), bad).expect("write");
    assert!(
        sk.wait_for_log("configuration reload refused", Duration::from_secs(30)),
        "{}",
        sk.logs()
    );
    let c = TestClient::default();
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &[
                ("authorization", &format!("Bearer {}", support::CALLER_KEY)),
                ("connection-id", "c1"),
                ("provider-config-key", "echo"),
                (
                    "base-url-override",
                    &format!("ftp://u:{PASSWORD}@h.example"),
                ),
            ],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(!res.text().contains(PASSWORD), "{}", res.text());
    assert!(res.text().contains("ftp://***@h.example"), "{}", res.text());
    let logs = sk.logs();
    assert!(!logs.contains(PASSWORD), "{logs}");
    assert!(logs.contains("https://***@api.example"), "{logs}");
}
