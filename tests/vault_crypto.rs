//! Encryption at rest through the real binary: `sidekey vault new-key | encrypt | rekey`,
//! `sidekey check` on a sealed vault with the key, without it and with a wrong one, serving a
//! sealed vault (the opened credentials reach a loopback upstream), and a reload that cannot
//! open the vault keeping the last good configuration. Every output is searched for the
//! secrets and keys used.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::client::{TestClient, AUTH};
use support::sidekey::{run_cli_env, sidekey, Sidekey};
use support::upstream::{ok_json, Upstream};

const API_KEY: &str = "sk_live_crypto_api_key_1";
const PASSWORD: &str = "crypto-basic-password-2";
const ACCESS: &str = "crypto-access-token-3";
const REFRESH: &str = "crypto-refresh-token-4";
const CLIENT_SECRET: &str = "crypto-client-secret-5";
const SECRETS: [&str; 5] = [API_KEY, PASSWORD, ACCESS, REFRESH, CLIENT_SECRET];

/// Waits long enough for a reload on a slow, shared machine; never an upper bound on speed.
const WAIT: Duration = Duration::from_secs(30);

fn providers(base: &str) -> String {
    format!(
        r#"
echo: {{auth_mode: API_KEY, proxy: {{base_url: "{base}/api", headers: {{x-key: "${{apiKey}}"}}}}}}
basic: {{auth_mode: BASIC, proxy: {{base_url: "{base}/basic"}}}}
oauth: {{auth_mode: OAUTH2, token_url: "{base}/token", proxy: {{base_url: "{base}/oauth"}}}}
"#
    )
}

fn plain_vault() -> String {
    format!(
        r#"# my vault: kept at the top
integrations:
  - {{unique_key: echo, provider: echo}}
  - {{unique_key: basic, provider: basic}}
  - unique_key: oauth
    provider: oauth
    credentials: {{type: OAUTH2, oauth_client_id: visible-client-id, oauth_client_secret: "{CLIENT_SECRET}"}}
connections:
  - {{connection_id: c1, provider_config_key: echo, credentials: {{type: API_KEY, apiKey: "{API_KEY}"}}}}
  - {{connection_id: c2, provider_config_key: basic, credentials: {{type: BASIC, username: visible-user, password: "{PASSWORD}"}}}}
  - connection_id: c3
    provider_config_key: oauth
    credentials: {{type: OAUTH2, access_token: "{ACCESS}", refresh_token: "{REFRESH}", expires_at: "2099-01-01T00:00:00Z"}}
"#
    )
}

/// A directory with providers.yaml and vault.yaml.
fn files(vault: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("providers.yaml"),
        providers("http://127.0.0.1:9"),
    )
    .expect("write providers");
    std::fs::write(dir.path().join("vault.yaml"), vault).expect("write vault");
    dir
}

/// Runs a subcommand on the directory's files with exactly these `SIDEKEY_*` variables, and
/// checks that nothing it printed holds a secret or a key.
fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(ToString::to_string).collect();
    all.push(format!(
        "--providers={}",
        dir.join("providers.yaml").display()
    ));
    all.push(format!("--vault={}", dir.join("vault.yaml").display()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli_env(&all, dir, env);
    let text = format!("{out}{err}");
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} printed by {args:?}:\n{text}");
    }
    for (_, v) in env {
        assert!(!text.contains(v), "a key printed by {args:?}:\n{text}");
    }
    (code, text)
}

fn new_key(dir: &Path) -> String {
    let (code, out, err) = run_cli_env(&["vault", "new-key"], dir, &[]);
    assert_eq!(code, 0, "{err}");
    let key = out.trim().to_string();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(key.len() >= 43, "{key}");
    key
}

fn vault_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("vault.yaml")).expect("read vault")
}

fn assert_sealed(text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} left in plaintext:\n{text}");
    }
    assert_eq!(text.matches("enc:v1:").count(), 5, "{text}");
    // What is not secret stays readable.
    for visible in ["visible-client-id", "visible-user", "2099-01-01T00:00:00Z"] {
        assert!(text.contains(visible), "{visible} missing:\n{text}");
    }
}

#[test]
fn encrypt_then_check_with_without_and_with_a_wrong_key() {
    let dir = files(&plain_vault());
    let d = dir.path();
    let key = new_key(d);
    let other = new_key(d);
    assert_ne!(key, other);
    let with_key = [("SIDEKEY_ENCRYPTION_KEY", key.as_str())];

    // No key: refused, nothing written.
    let (code, out) = cli(d, &["vault", "encrypt"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SIDEKEY_ENCRYPTION_KEY is not set"), "{out}");
    assert_eq!(vault_text(d), plain_vault());
    // A malformed key: refused, not shown.
    let (code, out) = cli(
        d,
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", "c2hvcnQ=")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("SIDEKEY_ENCRYPTION_KEY must be 32 bytes"),
        "{out}"
    );
    assert_eq!(vault_text(d), plain_vault());

    let (code, out) = cli(d, &["vault", "encrypt"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 secret value(s) sealed"), "{out}");
    let sealed = vault_text(d);
    assert_sealed(&sealed);
    assert!(
        sealed.starts_with("# my vault: kept at the top\n"),
        "{sealed}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("vault.yaml"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Encrypting again changes nothing.
    let (code, out) = cli(d, &["vault", "encrypt"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing was written"), "{out}");
    assert_eq!(vault_text(d), sealed);

    let (code, out) = cli(d, &["check"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 3 integrations, 3 connections"), "{out}");

    // Integrations come first in the file, so the first sealed field is the client secret.
    let (code, out) = cli(d, &["check"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: integrations[2].credentials.oauth_client_secret: sealed, but SIDEKEY_ENCRYPTION_KEY is not set",
            d.join("vault.yaml").display()
        )),
        "{out}"
    );
    let (code, out) = cli(d, &["check"], &[("SIDEKEY_ENCRYPTION_KEY", other.as_str())]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("integrations[2].credentials.oauth_client_secret: cannot be opened with this SIDEKEY_ENCRYPTION_KEY (wrong key, or the value was moved or altered)"),
        "{out}"
    );
    // A wrong key cannot be used to seal the rest either.
    let (code, out) = cli(
        d,
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", other.as_str())],
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(vault_text(d), sealed);

    // A hand edit puts a plaintext value into the sealed vault: accepted with a warning,
    // then sealed by the next encrypt.
    let start = sealed.find("apiKey: enc:v1:").expect("sealed apiKey");
    let end = start
        + sealed[start..]
            .find(['\n', ',', '}'])
            .expect("end of value");
    let edited = format!(
        "{}apiKey: hand-edited-key-6{}",
        &sealed[..start],
        &sealed[end..]
    );
    std::fs::write(d.join("vault.yaml"), &edited).expect("write");
    let (code, out) = cli(d, &["check"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("connections[0].credentials.apiKey: warning: is not sealed; it will be sealed on the next write"),
        "{out}"
    );
    let (code, out) = cli(d, &["vault", "encrypt"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(4 of them were sealed already)"), "{out}");
    let resealed = vault_text(d);
    assert!(!resealed.contains("hand-edited-key-6"), "{resealed}");
    let (code, out) = cli(d, &["check"], &with_key);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn an_invalid_vault_is_not_encrypted() {
    let broken = plain_vault().replace("provider: basic}", "provider: no-such-provider}");
    let dir = files(&broken);
    let d = dir.path();
    let key = new_key(d);
    let (code, out) = cli(
        d,
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", key.as_str())],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("integrations[1]"), "{out}");
    assert!(out.contains("the vault was not changed"), "{out}");
    assert_eq!(vault_text(d), broken);
}

#[test]
fn rekey_moves_every_value_to_the_new_key() {
    let dir = files(&plain_vault());
    let d = dir.path();
    let (old, new, stranger) = (new_key(d), new_key(d), new_key(d));
    let (code, out) = cli(
        d,
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", old.as_str())],
    );
    assert_eq!(code, 0, "{out}");
    let sealed = vault_text(d);

    // Without the new key, or with a current key that does not open the vault: nothing changes.
    let (code, out) = cli(
        d,
        &["vault", "rekey"],
        &[("SIDEKEY_ENCRYPTION_KEY", old.as_str())],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("SIDEKEY_NEW_ENCRYPTION_KEY is not set"),
        "{out}"
    );
    let (code, out) = cli(
        d,
        &["vault", "rekey"],
        &[
            ("SIDEKEY_ENCRYPTION_KEY", stranger.as_str()),
            ("SIDEKEY_NEW_ENCRYPTION_KEY", new.as_str()),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be opened"), "{out}");
    assert_eq!(vault_text(d), sealed);

    let (code, out) = cli(
        d,
        &["vault", "rekey"],
        &[
            ("SIDEKEY_ENCRYPTION_KEY", old.as_str()),
            ("SIDEKEY_NEW_ENCRYPTION_KEY", new.as_str()),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("5 secret value(s) sealed with the new key"),
        "{out}"
    );
    let rekeyed = vault_text(d);
    assert_sealed(&rekeyed);
    assert_ne!(rekeyed, sealed);
    assert!(rekeyed.starts_with("# my vault"), "{rekeyed}");

    let (code, out) = cli(d, &["check"], &[("SIDEKEY_ENCRYPTION_KEY", old.as_str())]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be opened with this"), "{out}");
    let (code, out) = cli(d, &["check"], &[("SIDEKEY_ENCRYPTION_KEY", new.as_str())]);
    assert_eq!(code, 0, "{out}");
}

/// The JSON log events whose message is `message`.
fn events(sk: &Sidekey, message: &str) -> Vec<serde_json::Value> {
    sk.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test]
async fn serving_a_sealed_vault_injects_the_opened_credentials() {
    let up = Upstream::start(ok_json()).await;
    // Seal with one key, rekey to another, and serve with the new one.
    let dir = files(&plain_vault());
    std::fs::write(dir.path().join("providers.yaml"), providers(&up.url(""))).expect("write");
    let (old, key) = (new_key(dir.path()), new_key(dir.path()));
    let (code, out) = cli(
        dir.path(),
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", old.as_str())],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(
        dir.path(),
        &["vault", "rekey"],
        &[
            ("SIDEKEY_ENCRYPTION_KEY", old.as_str()),
            ("SIDEKEY_NEW_ENCRYPTION_KEY", key.as_str()),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let sealed = vault_text(dir.path());
    let p = providers(&up.url(""));

    // Without the key, or with the old one, sidekey refuses to start and says where.
    for env in [vec![], vec![("SIDEKEY_ENCRYPTION_KEY", old.as_str())]] {
        let listen = ["--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"];
        let mut args = vec!["serve"];
        args.extend(listen);
        let (code, out) = cli(dir.path(), &args, &env);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("integrations[2].credentials.oauth_client_secret"),
            "{out}"
        );
    }

    let sk = sidekey(&p, &sealed)
        .env("SIDEKEY_ENCRYPTION_KEY", &key)
        .arg("--reload-settle=50ms")
        .start();
    let c = TestClient::default();
    assert_eq!(c.proxy(&sk.url(""), "/x", "c1", "echo").await.status, 200);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c2", "basic").await.status, 200);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c3", "oauth").await.status, 200);
    let got = up.requests();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].header("x-key"), Some(API_KEY));
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("visible-user:{PASSWORD}"));
    assert_eq!(
        got[1].header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        got[2].header("authorization"),
        Some(format!("Bearer {ACCESS}").as_str())
    );

    // A reload that cannot open the vault (a value sealed under another key) is refused; the
    // last good configuration keeps serving the same credential.
    let start = sealed.find("apiKey: enc:v1:").expect("sealed apiKey");
    let end = start + sealed[start..].find(['\n', ',', '}']).expect("end");
    let foreign = {
        let (code, out) = cli(
            dir.path(),
            &["vault", "rekey"],
            &[
                ("SIDEKEY_ENCRYPTION_KEY", key.as_str()),
                ("SIDEKEY_NEW_ENCRYPTION_KEY", old.as_str()),
            ],
        );
        assert_eq!(code, 0, "{out}");
        let t = vault_text(dir.path());
        let s = t.find("apiKey: enc:v1:").expect("sealed apiKey");
        let e = s + t[s..].find(['\n', ',', '}']).expect("end");
        t[s..e].to_string()
    };
    let bad = format!("{}{foreign}{}", &sealed[..start], &sealed[end..]);
    std::fs::write(sk.path("vault.yaml"), &bad).expect("write");
    sk.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while events(
        &sk,
        "configuration reload refused; the previous configuration keeps serving",
    )
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no refused reload:\n{}",
            sk.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sk.logs().contains(
            "connections[0].credentials.apiKey: cannot be opened with this SIDEKEY_ENCRYPTION_KEY"
        ),
        "{}",
        sk.logs()
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "c1", "echo").await.status, 200);
    assert_eq!(up.requests()[3].header("x-key"), Some(API_KEY));

    // A hand edit with a plaintext value is taken, with a warning in the log.
    let edited = format!(
        "{}apiKey: hand-edited-key-7{}",
        &sealed[..start],
        &sealed[end..]
    );
    std::fs::write(sk.path("vault.yaml"), &edited).expect("write");
    sk.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while events(&sk, "configuration reloaded").is_empty() {
        assert!(Instant::now() < deadline, "no reload:\n{}", sk.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warned = events(&sk, "configuration warning");
    assert!(
        warned.iter().any(|e| e["level"] == "WARN"
            && e["warning"]
                .as_str()
                .is_some_and(|w| w.ends_with("connections[0].credentials.apiKey: warning: is not sealed; it will be sealed on the next write"))),
        "{}",
        sk.logs()
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "c1", "echo").await.status, 200);
    assert_eq!(up.requests()[4].header("x-key"), Some("hand-edited-key-7"));

    let logs = sk.logs();
    for s in SECRETS.iter().chain([&key.as_str(), &old.as_str()]) {
        assert!(!logs.contains(s), "{s} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn a_plaintext_hand_edit_is_sealed_by_the_next_api_write() {
    let up = Upstream::start(ok_json()).await;
    let dir = files(&plain_vault());
    let key = new_key(dir.path());
    let (code, out) = cli(
        dir.path(),
        &["vault", "encrypt"],
        &[("SIDEKEY_ENCRYPTION_KEY", key.as_str())],
    );
    assert_eq!(code, 0, "{out}");
    let sealed = vault_text(dir.path());
    let sk = sidekey(&providers(&up.url("")), &sealed)
        .env("SIDEKEY_ENCRYPTION_KEY", &key)
        .arg("--reload-settle=50ms")
        .start();
    // The hand edit: c1's apiKey in plaintext. Taken with a warning.
    let start = sealed.find("apiKey: enc:v1:").expect("sealed apiKey");
    let end = start + sealed[start..].find(['\n', ',', '}']).expect("end");
    let edited = format!(
        "{}apiKey: hand-edited-key-8{}",
        &sealed[..start],
        &sealed[end..]
    );
    std::fs::write(sk.path("vault.yaml"), &edited).expect("write");
    sk.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while events(&sk, "configuration reloaded").is_empty() {
        assert!(Instant::now() < deadline, "no reload:\n{}", sk.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(vault_text(sk.dir()).contains("hand-edited-key-8"));
    // An API write of another connection (c2's metadata) rewrites the file: every secret
    // sealed again, the hand-edited one included, and the edit kept.
    let c = TestClient::default();
    let res = c
        .send(
            "POST",
            &sk.url("/connections/metadata"),
            &[
                ("authorization", AUTH),
                ("content-type", "application/json"),
            ],
            bytes::Bytes::from(
                serde_json::json!({"connection_id": "c2", "provider_config_key": "basic",
                                   "metadata": {"team": "blue"}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let text = vault_text(sk.dir());
    assert!(!text.contains("hand-edited-key-8"), "{text}");
    assert_sealed(&text);
    assert!(text.contains(r#"metadata: {"team": "blue"}"#), "{text}");
    // Sealed, not lost: the proxy injects the edited key, and check sees no plaintext left.
    assert_eq!(c.proxy(&sk.url(""), "/x", "c1", "echo").await.status, 200);
    assert_eq!(
        up.requests().last().and_then(|r| r.header("x-key")),
        Some("hand-edited-key-8")
    );
    let (code, out) = cli(
        sk.dir(),
        &["check"],
        &[("SIDEKEY_ENCRYPTION_KEY", key.as_str())],
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
}
