//! OAuth connections through the real binary: a loopback token endpoint (HTTP, or HTTPS with a
//! test CA, `--extra-ca` and `--resolve`) that counts its calls and records how the client
//! credentials arrived; refresh before expiry, after a 401, single-flight, failures and the
//! cool-down, rotation persisted across restarts, client-credentials caching, a read-only vault
//! with a state file, and SIGKILL in the middle of vault writes.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use support::ca::TestCa;
use support::client::TestClient;
use support::sidekey::{run_cli, sidekey, Sidekey};
use support::upstream::{reply, Recorded, SyncHandler, Upstream};

/// An RFC 3339 timestamp `offset` seconds from now.
fn ts(offset: i64) -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + offset)
        .expect("timestamp")
        .to_string()
}

/// The form fields of a token request.
fn form(r: &Recorded) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(&r.body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn json(status: u16, v: serde_json::Value) -> http::Response<support::upstream::TestBody> {
    let mut r = reply(status, v.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    r
}

/// A token endpoint: its base URL as providers.yaml should name it, and the sidekey flags that
/// make that URL reach it.
struct TokenServer {
    up: Upstream,
    base: String,
    args: Vec<String>,
}

impl TokenServer {
    /// Over HTTPS as `https://auth.test` (a CA made here, `--extra-ca`, `--resolve`), or HTTP.
    async fn start(handler: SyncHandler, tls: bool, dir: &Path) -> Self {
        if !tls {
            let up = Upstream::start(handler).await;
            let base = up.url("");
            return Self {
                up,
                base,
                args: Vec::new(),
            };
        }
        let ca = TestCa::new();
        let cert = ca.server_cert(&["auth.test"]);
        let up = Upstream::start_tls(handler, cert.server_config()).await;
        let pem = dir.join("ca.pem");
        ca.write_pem(&pem);
        let args = vec![
            format!("--extra-ca={}", pem.display()),
            format!("--resolve=auth.test:443:127.0.0.1:{}", up.port()),
        ];
        Self {
            up,
            base: "https://auth.test".into(),
            args,
        }
    }

    fn calls(&self) -> Vec<Recorded> {
        self.up.requests()
    }

    fn count(&self) -> usize {
        self.up.count()
    }
}

/// A token handler that always grants `at-new` / `rt-new`, after `delay`.
fn grants(delay: Duration) -> SyncHandler {
    Arc::new(move |_| {
        std::thread::sleep(delay);
        json(
            200,
            serde_json::json!({"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600, "token_type": "Bearer"}),
        )
    })
}

/// An API that records the bearer token and answers 200, or 401 to tokens in `refuse`.
fn api(refuse: Arc<Mutex<Vec<String>>>) -> SyncHandler {
    Arc::new(move |r| {
        let auth = r.header("authorization").unwrap_or("").to_string();
        if refuse
            .lock()
            .expect("lock")
            .iter()
            .any(|t| auth == format!("Bearer {t}"))
        {
            return json(401, serde_json::json!({"upstream": "token rejected"}));
        }
        json(200, serde_json::json!({"ok": true}))
    })
}

fn bearer(r: &Recorded) -> String {
    r.header("authorization")
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_string()
}

fn providers(token_base: &str, api_base: &str) -> String {
    format!(
        r#"
oa: {{auth_mode: OAUTH2, token_url: "{token_base}/oauth/token", proxy: {{base_url: "{api_base}"}}}}
ob: {{auth_mode: OAUTH2, token_url: "{token_base}/oauth/token", token_request_auth_method: basic, proxy: {{base_url: "{api_base}"}}}}
cc: {{auth_mode: OAUTH2_CC, token_url: "{token_base}/cc/token", token_params: {{audience: api}}, proxy: {{base_url: "{api_base}"}}}}
"#
    )
}

const CLIENT_SECRET: &str = "client-secret-value-42";

/// A vault with integration `oa` (or `provider`) and the given connection lines.
fn vault(provider: &str, connections: &[String]) -> String {
    format!(
        "# my vault: hand-written comments at the top are kept\nintegrations:\n  - {{unique_key: i, provider: {provider}, credentials: {{oauth_client_id: cid, oauth_client_secret: {CLIENT_SECRET}, scopes: \"read,write\"}}}}\nconnections:\n{}",
        connections
            .iter()
            .map(|c| format!("  - {c}\n"))
            .collect::<String>()
    )
}

fn oauth_conn(id: &str, access: &str, refresh: &str, expires_at: Option<&str>) -> String {
    let exp = expires_at
        .map(|e| format!(", expires_at: \"{e}\""))
        .unwrap_or_default();
    format!("{{connection_id: {id}, provider_config_key: i, credentials: {{type: OAUTH2, access_token: {access}, refresh_token: {refresh}{exp}}}}}")
}

fn start(providers: &str, vault: &str, dir: tempfile::TempDir, args: &[String]) -> Sidekey {
    sidekey(providers, vault)
        .in_dir(dir)
        .args(args.iter().cloned())
        .start()
}

/// The credentials map of connection `id` in the vault file, or in its journal (the writes
/// not yet folded into the vault: the last group that put `id` wins).
fn vault_credentials(path: &Path, id: &str) -> serde_yaml_ng::Value {
    let mut journal = path.as_os_str().to_owned();
    journal.push(".journal");
    let journal = std::fs::read_to_string(&journal).unwrap_or_default();
    let last_put = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|g| g["ops"].as_array().cloned().unwrap_or_default())
        .filter_map(|op| op.get("put").cloned())
        .rfind(|c| c["connection_id"].as_str() == Some(id));
    if let Some(c) = last_put {
        return serde_yaml_ng::to_value(&c["credentials"]).expect("credentials");
    }
    let text = std::fs::read_to_string(path).expect("read vault");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("vault is YAML");
    v["connections"]
        .as_sequence()
        .expect("connections")
        .iter()
        .find(|c| c["connection_id"].as_str() == Some(id))
        .map(|c| c["credentials"].clone())
        .unwrap_or_else(|| panic!("no connection {id} in {text}"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

fn assert_no_secrets(logs: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!logs.contains(s), "secret {s:?} in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_an_expired_token_make_exactly_one_token_call_over_https() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::from_millis(300)), true, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let v = vault("oa", &[oauth_conn("c", "at-old", "rt-old", Some(&ts(-60)))]);
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let client = TestClient::default();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, base) = (client.clone(), sk.url(""));
            tokio::spawn(async move { client.proxy(&base, "/items", "c", "i").await })
        })
        .collect();
    for t in tasks {
        let res = t.await.expect("join");
        assert_eq!(res.status, 200, "{}", res.text());
    }
    assert_eq!(
        token.count(),
        1,
        "single-flight: one token call for 200 requests"
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 200);
    assert!(reqs.iter().all(|r| bearer(r) == "at-new"));
    let call = &token.calls()[0];
    assert_eq!(call.uri.path(), "/oauth/token");
    assert_eq!(call.method, http::Method::POST);
    let f = form(call);
    assert_eq!(f["grant_type"], "refresh_token");
    assert_eq!(f["refresh_token"], "rt-old");
    assert!(sk.wait_for_log(r#""result":"ok""#, Duration::from_secs(5)));
    assert_no_secrets(&sk.logs(), &["at-new", "rt-new", "rt-old", CLIENT_SECRET]);
}

#[tokio::test]
async fn refreshes_inside_the_expiry_buffer_and_not_before() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::ZERO), false, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let v = vault(
        "oa",
        &[
            oauth_conn("soon", "at-soon", "rt-soon", Some(&ts(120))),
            oauth_conn("later", "at-later", "rt-later", Some(&ts(3600))),
            oauth_conn("never", "at-never", "rt-never", None),
        ],
    );
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let c = TestClient::default();
    for id in ["later", "never"] {
        assert_eq!(c.proxy(&sk.url(""), "/x", id, "i").await.status, 200);
    }
    assert_eq!(
        token.count(),
        0,
        "tokens outside the 5 min buffer are used as they are"
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "soon", "i").await.status, 200);
    assert_eq!(
        token.count(),
        1,
        "a token 2 min from expiry is refreshed first"
    );
    assert_eq!(form(&token.calls()[0])["refresh_token"], "rt-soon");
    let seen: Vec<String> = up.requests().iter().map(bearer).collect();
    assert_eq!(seen, ["at-later", "at-never", "at-new"]);
}

#[tokio::test]
async fn an_upstream_401_refreshes_once_and_resends() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::ZERO), false, dir.path()).await;
    let refuse = Arc::new(Mutex::new(vec!["at-revoked".to_string()]));
    let up = Upstream::start(api(refuse)).await;
    // No expires_at: only the upstream can say the token is dead.
    let v = vault("oa", &[oauth_conn("c", "at-revoked", "rt-1", None)]);
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let c = TestClient::default();
    let res = c.proxy(&sk.url(""), "/items?page=2", "c", "i").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["ok"], true);
    assert_eq!(token.count(), 1);
    let seen: Vec<(String, String)> = up
        .requests()
        .iter()
        .map(|r| (bearer(r), r.uri.to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            ("at-revoked".to_string(), "/items?page=2".to_string()),
            ("at-new".to_string(), "/items?page=2".to_string())
        ]
    );
    // The refreshed token is kept: the next request goes straight through.
    assert_eq!(c.proxy(&sk.url(""), "/items", "c", "i").await.status, 200);
    assert_eq!((token.count(), up.count()), (1, 3));
}

#[tokio::test]
async fn an_upstream_401_resends_a_post_body_from_the_replay_buffer_with_retries_zero() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::ZERO), false, dir.path()).await;
    let refuse = Arc::new(Mutex::new(vec!["at-revoked".to_string()]));
    let up = Upstream::start(api(refuse)).await;
    let v = vault("oa", &[oauth_conn("c", "at-revoked", "rt-1", None)]);
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let c = TestClient::default();
    let mut h = support::client::proxy_headers("c", "i");
    h.push(("retries", "0"));
    let payload: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
    let res = c
        .send("POST", &sk.url("/proxy/items"), &h, payload.clone())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (bearer(&reqs[0]), bearer(&reqs[1])),
        ("at-revoked".into(), "at-new".into())
    );
    assert_eq!(
        reqs[1].body.as_ref(),
        payload.as_slice(),
        "the resend carries the whole body"
    );

    // A body over --retry-buffer-bytes (64 KiB by default) streams once: its 401 goes back as is.
    let big = vec![7u8; 200_000];
    let v2 = vault("oa", &[oauth_conn("d", "at-revoked", "rt-1", None)]);
    let dir2 = tempfile::tempdir().expect("dir");
    let token2 = TokenServer::start(grants(Duration::ZERO), false, dir2.path()).await;
    let refuse2 = Arc::new(Mutex::new(vec!["at-revoked".to_string()]));
    let up2 = Upstream::start(api(refuse2)).await;
    let sk2 = start(
        &providers(&token2.base, &up2.url("")),
        &v2,
        dir2,
        &token2.args,
    );
    let res = c
        .send(
            "POST",
            &sk2.url("/proxy/items"),
            &support::client::proxy_headers("d", "i"),
            big,
        )
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.json()["upstream"],
        "token rejected",
        "the upstream's own 401"
    );
    assert_eq!(up2.count(), 1, "a streamed body is never sent twice");
}

#[tokio::test]
async fn a_failing_token_endpoint_answers_credentials_refresh_failed_and_fails_fast() {
    let dir = tempfile::tempdir().expect("dir");
    let failing: SyncHandler = Arc::new(|_| {
        json(
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": "refresh token rt-dead-value was revoked"}),
        )
    });
    let token = TokenServer::start(failing, false, dir.path()).await;
    let up = Upstream::start(api(Arc::new(Mutex::new(vec!["at-nox".into()])))).await;
    let v = vault(
        "oa",
        &[
            oauth_conn("c", "at-expired", "rt-dead-value", Some(&ts(-60))),
            oauth_conn("nox", "at-nox", "rt-nox", None),
        ],
    );
    let mut args = token.args.clone();
    args.push("--refresh-cooldown=1s".into());
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &args);
    let c = TestClient::default();
    let check = |res: &support::client::TestResponse| {
        assert_eq!(res.status, 401, "{}", res.text());
        assert_eq!(res.error_code(), "credentials_refresh_failed");
        assert_eq!(res.json()["error"]["provider_error"], "invalid_grant");
        assert_eq!(
            res.header("sidekey-error"),
            Some("credentials_refresh_failed")
        );
    };
    check(&c.proxy(&sk.url(""), "/x", "c", "i").await);
    assert_eq!(token.count(), 1);
    for _ in 0..5 {
        check(&c.proxy(&sk.url(""), "/x", "c", "i").await);
    }
    assert_eq!(token.count(), 1, "no token call during the cool-down");
    assert_eq!(up.count(), 0, "nothing reaches the API without a token");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    check(&c.proxy(&sk.url(""), "/x", "c", "i").await);
    assert_eq!(
        token.count(),
        2,
        "after the cool-down the endpoint is asked again"
    );

    // After an upstream 401, a failed refresh returns the upstream's own 401.
    let res = c.proxy(&sk.url(""), "/x", "nox", "i").await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["upstream"], "token rejected");
    assert_eq!(res.header("sidekey-error"), None);
    assert_eq!(token.count(), 3);
    assert!(sk.wait_for_log(
        r#""provider_error":"invalid_grant""#,
        Duration::from_secs(5)
    ));
    assert_no_secrets(
        &sk.logs(),
        &[
            "rt-dead-value",
            "rt-nox",
            "at-expired",
            CLIENT_SECRET,
            "was revoked",
        ],
    );
}

/// Grants `at-N` / `rt-(N+1)` for `rt-N`, and refuses other refresh tokens.
fn rotating() -> SyncHandler {
    Arc::new(|r| {
        let f = form(r);
        match f
            .get("refresh_token")
            .and_then(|t| t.strip_prefix("rt-"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) => json(
                200,
                serde_json::json!({"access_token": format!("at-{n}"), "refresh_token": format!("rt-{}", n + 1), "expires_in": 3600}),
            ),
            None => json(400, serde_json::json!({"error": "invalid_grant"})),
        }
    })
}

#[tokio::test]
async fn rotation_is_persisted_to_the_vault_and_used_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(rotating(), true, dir.path()).await;
    let refuse = Arc::new(Mutex::new(vec!["at-old".to_string()]));
    let up = Upstream::start(api(refuse.clone())).await;
    let v = vault(
        "oa",
        &[
            oauth_conn("c", "at-old", "rt-1", Some(&ts(-60))),
            oauth_conn("other", "at-other", "rt-other", None),
        ],
    );
    let p = providers(&token.base, &up.url(""));
    let mut sk = start(&p, &v, dir, &token.args);
    let c = TestClient::default();
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    let path = sk.path("vault.yaml");
    let creds = vault_credentials(&path, "c");
    assert_eq!(creds["access_token"].as_str(), Some("at-1"));
    assert_eq!(creds["refresh_token"].as_str(), Some("rt-2"));
    assert!(creds["expires_at"]
        .as_str()
        .is_some_and(|e| e > ts(3000).as_str()));
    assert_eq!(
        vault_credentials(&path, "other")["access_token"].as_str(),
        Some("at-other")
    );
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("# my vault"), "{text}");
    let (code, out, _) = run_cli(
        &[
            "check",
            &format!("--providers={}", sk.path("providers.yaml").display()),
            &format!("--vault={}", path.display()),
        ],
        sk.dir(),
    );
    assert_eq!(code, 0, "{out}");

    // Restart on the same files: the stored token is used without a token call.
    let dir = sk.take_dir();
    drop(sk);
    let sk = start(&p, &text, dir, &token.args);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-1");
    assert_eq!(token.count(), 1);
    // at-1 is revoked upstream: the refresh uses the rotated rt-2 (rt-1 is gone for good).
    refuse.lock().expect("lock").push("at-1".into());
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(token.count(), 2);
    assert_eq!(form(&token.calls()[1])["refresh_token"], "rt-2");
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-2");
    let creds = vault_credentials(&sk.path("vault.yaml"), "c");
    assert_eq!(creds["refresh_token"].as_str(), Some("rt-3"));
    assert_no_secrets(&sk.logs(), &["rt-2", "rt-3", "at-2", CLIENT_SECRET]);
}

/// Replaces the vault like an editor's rename-on-save, then waits until sidekey has logged
/// `reloads` reloads in all.
fn edit_vault(sk: &Sidekey, edit: impl Fn(&str) -> String, reloads: usize) {
    let path = sk.path("vault.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changes the vault");
    let tmp = path.with_file_name(".vault.yaml.tmp");
    std::fs::write(&tmp, edited).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sk.logs().matches("configuration reloaded").count() < reloads {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            sk.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_live_hand_edit_of_a_refreshed_credential_wins_and_other_edits_keep_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(rotating(), true, dir.path()).await;
    let refuse = Arc::new(Mutex::new(vec!["at-old".to_string()]));
    let up = Upstream::start(api(refuse.clone())).await;
    let v = vault(
        "oa",
        &[
            oauth_conn("c", "at-old", "rt-1", Some(&ts(-60))),
            oauth_conn("other", "at-other", "rt-other", None),
        ],
    );
    let p = providers(&token.base, &up.url(""));
    let sk = start(&p, &v, dir, &token.args);
    let c = TestClient::default();
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(token.count(), 1);
    let path = sk.path("vault.yaml");
    assert_eq!(
        vault_credentials(&path, "c")["access_token"].as_str(),
        Some("at-1")
    );

    // An edit of another connection: `c`'s record is unchanged (it keeps its version), so
    // the manager's state stands, and no refresh is made.
    edit_vault(&sk, |t| t.replace("at-other", "at-other-2"), 1);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-1");
    assert_eq!(token.count(), 1);
    let vault_won = "the vault's credential changed; using it";
    assert!(!sk.logs().contains(vault_won), "{}", sk.logs());

    // The operator replaces `c`'s access token by hand: a new version, and it wins.
    edit_vault(&sk, |t| t.replace("at-1", "at-by-hand"), 2);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-by-hand");
    assert_eq!(token.count(), 1, "the vault's token is used as it is");
    // The log line comes through the child's pipe and a reader thread, maybe after the
    // response: wait for it (on a loaded machine the plain read missed it, 1 run in 6).
    assert!(
        sk.wait_for_log(vault_won, Duration::from_secs(10)),
        "{}",
        sk.logs()
    );
    assert_eq!(sk.logs().matches(vault_won).count(), 1, "{}", sk.logs());
    // The next refresh starts from the vault's record and is written on top of the edit.
    refuse.lock().expect("lock").push("at-by-hand".into());
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(token.count(), 2);
    assert_eq!(form(&token.calls()[1])["refresh_token"], "rt-2");
    assert_eq!(
        vault_credentials(&path, "c")["access_token"].as_str(),
        Some("at-2")
    );
    assert_eq!(
        vault_credentials(&path, "other")["access_token"].as_str(),
        Some("at-other-2"),
        "the other edit survives the token write"
    );
}

#[tokio::test]
async fn client_credentials_go_in_basic_or_in_the_form_as_the_provider_says() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::ZERO), false, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let v = format!(
        "integrations:\n  - {{unique_key: ia, provider: oa, credentials: {{oauth_client_id: cid, oauth_client_secret: {CLIENT_SECRET}}}}}\n  - {{unique_key: ib, provider: ob, credentials: {{oauth_client_id: cid, oauth_client_secret: {CLIENT_SECRET}}}}}\nconnections:\n  - {}\n  - {}\n",
        oauth_conn("c", "x", "rt-body", Some(&ts(-1))).replace("provider_config_key: i,", "provider_config_key: ia,"),
        oauth_conn("c", "x", "rt-basic", Some(&ts(-1))).replace("provider_config_key: i,", "provider_config_key: ib,"),
    );
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let c = TestClient::default();
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "ia").await.status, 200);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "ib").await.status, 200);
    let calls = token.calls();
    assert_eq!(calls.len(), 2);
    let body = calls
        .iter()
        .find(|r| form(r)["refresh_token"] == "rt-body")
        .expect("body call");
    let basic = calls
        .iter()
        .find(|r| form(r)["refresh_token"] == "rt-basic")
        .expect("basic call");
    assert_eq!(body.header("authorization"), None);
    assert_eq!(form(body).get("client_id").map(String::as_str), Some("cid"));
    assert_eq!(
        form(body).get("client_secret").map(String::as_str),
        Some(CLIENT_SECRET)
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("cid:{CLIENT_SECRET}"));
    assert_eq!(
        basic.header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    assert!(!form(basic).contains_key("client_secret"));
    assert!(!form(basic).contains_key("client_id"));
    assert_eq!(
        basic.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn client_credentials_tokens_are_cached() {
    let dir = tempfile::tempdir().expect("dir");
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let handler: SyncHandler = Arc::new(move |_| {
        let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
        json(
            200,
            serde_json::json!({"access_token": format!("cc-{i}"), "expires_in": 3600}),
        )
    });
    let token = TokenServer::start(handler, true, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let v = vault(
        "cc",
        &["{connection_id: c, provider_config_key: i, credentials: {type: OAUTH2_CC, client_id: conn-client}}".to_string()],
    );
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &token.args);
    let c = TestClient::default();
    for _ in 0..2 {
        assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    }
    assert_eq!(token.count(), 1, "the token is cached");
    let seen: Vec<String> = up.requests().iter().map(bearer).collect();
    assert_eq!(seen, ["cc-1", "cc-1"]);
    let call = &token.calls()[0];
    assert_eq!(call.uri.path(), "/cc/token");
    let f = form(call);
    assert_eq!(f["grant_type"], "client_credentials");
    assert_eq!(f["scope"], "read write");
    assert_eq!(f["audience"], "api");
    assert_eq!(
        f["client_id"], "conn-client",
        "the connection's client id wins"
    );
    assert_eq!(f["client_secret"], CLIENT_SECRET);
}

#[tokio::test]
async fn a_read_only_vault_keeps_refreshed_credentials_in_the_state_file() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(rotating(), false, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let p = providers(&token.base, &up.url(""));
    let v = vault("oa", &[oauth_conn("c", "at-old", "rt-1", Some(&ts(-60)))]);
    let state = dir.path().join("state.yaml");
    let args: Vec<String> = token
        .args
        .iter()
        .cloned()
        .chain([
            "--vault-read-only".to_string(),
            format!("--state={}", state.display()),
        ])
        .collect();
    let mut sk = start(&p, &v, dir, &args);
    let c = TestClient::default();
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(token.count(), 1);
    assert_eq!(
        std::fs::read_to_string(sk.path("vault.yaml")).expect("vault"),
        v,
        "vault untouched"
    );
    assert_eq!(mode(&state), 0o600);
    let st: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&state).expect("state")).expect("YAML");
    let entry = &st["connections"][0];
    assert_eq!(entry["connection_id"].as_str(), Some("c"));
    assert_eq!(entry["credentials"]["access_token"].as_str(), Some("at-1"));
    assert_eq!(entry["credentials"]["refresh_token"].as_str(), Some("rt-2"));
    assert!(entry["updated_at"].as_str().is_some());
    assert_eq!(entry["replaces"].as_str().map(str::len), Some(64));

    // Restart: the state file's credential is used (the vault still holds what it replaced).
    let dir = sk.take_dir();
    drop(sk);
    let mut sk = start(&p, &v, dir, &args);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-1");
    assert_eq!(token.count(), 1);

    // The operator rotates the Secret: the vault wins and the state entry is dropped.
    let dir = sk.take_dir();
    drop(sk);
    let edited = vault("oa", &[oauth_conn("c", "at-by-hand", "rt-by-hand", None)]);
    let sk = start(&p, &edited, dir, &args);
    assert_eq!(c.proxy(&sk.url(""), "/x", "c", "i").await.status, 200);
    assert_eq!(bearer(&up.requests()[up.count() - 1]), "at-by-hand");
    assert_eq!(token.count(), 1);
    let st = std::fs::read_to_string(&state).expect("state");
    assert!(!st.contains("at-1"), "stale entry dropped: {st}");
}

/// Sends proxy GETs over raw HTTP/1.1 until `stop`, ignoring failures (the process gets killed).
async fn hammer(addr: std::net::SocketAddr, id: &'static str, stop: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return;
        };
        let req = format!(
            "GET /proxy/x HTTP/1.1\r\nhost: sidekey\r\nauthorization: {}\r\nconnection-id: {id}\r\nprovider-config-key: i\r\nconnection: close\r\n\r\n",
            support::client::AUTH
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            return;
        }
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_vault_writes_leaves_a_valid_vault() {
    let dir = tempfile::tempdir().expect("dir");
    // Every grant expires within the buffer, so every request refreshes and rewrites the vault.
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = issued.clone();
    let handler: SyncHandler = Arc::new(move |_| {
        let mut issued = rec.lock().expect("lock");
        let at = format!("at-{}", issued.len() + 1);
        issued.push(at.clone());
        json(
            200,
            serde_json::json!({"access_token": at, "refresh_token": format!("rt-{}", issued.len()), "expires_in": 1}),
        )
    });
    let token = TokenServer::start(handler, false, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let p = providers(&token.base, &up.url(""));
    let ids = ["a", "b", "c"];
    let mut text = vault(
        "oa",
        &ids.iter()
            .map(|id| oauth_conn(id, "at-0", "rt-0", Some(&ts(-60))))
            .collect::<Vec<_>>(),
    );
    let mut dir = dir;
    for round in 0..5 {
        let mut sk = start(&p, &text, dir, &token.args);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| tokio::spawn(hammer(sk.addr, id, stop.clone())))
            .collect();
        let target = token.count() + 20 + 7 * round;
        let hang_guard = std::time::Instant::now() + Duration::from_secs(60);
        while token.count() < target {
            assert!(
                std::time::Instant::now() < hang_guard,
                "no refreshes:\n{}",
                sk.logs()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sk.signal("KILL");
        let _ = sk.wait_exit(Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let path = sk.path("vault.yaml");
        text = std::fs::read_to_string(&path).expect("vault");
        let (code, out, err) = run_cli(
            &[
                "check",
                &format!("--providers={}", sk.path("providers.yaml").display()),
                &format!("--vault={}", path.display()),
            ],
            sk.dir(),
        );
        assert_eq!(
            code, 0,
            "round {round}: vault invalid after SIGKILL:\n{out}{err}\n{text}"
        );
        let issued = issued.lock().expect("lock").clone();
        for id in ids {
            let at = vault_credentials(&path, id)["access_token"]
                .as_str()
                .expect("access_token")
                .to_string();
            assert!(
                at == "at-0" || issued.contains(&at),
                "round {round}: {id} has {at}"
            );
        }
        dir = sk.take_dir();
    }
    assert!(token.count() >= 100, "{} refreshes", token.count());
}

/// The `sidekey_oauth_connections` gauge from the admin listener.
async fn oauth_connections(c: &TestClient, sk: &Sidekey) -> u64 {
    let text = c
        .send("GET", &sk.admin_url("/metrics"), &[], "")
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix("sidekey_oauth_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sidekey_oauth_connections gauge in:\n{text}"))
}

#[tokio::test]
async fn a_connection_removed_from_the_vault_has_its_token_state_freed() {
    let dir = tempfile::tempdir().expect("dir");
    let token = TokenServer::start(grants(Duration::ZERO), false, dir.path()).await;
    let up = Upstream::start(api(Arc::default())).await;
    let keep = oauth_conn("keep", "at-keep", "rt-keep", Some(&ts(3600)));
    let gone = oauth_conn("gone", "at-gone", "rt-gone", Some(&ts(3600)));
    let mut args = token.args.clone();
    args.push("--reload-settle=50ms".into());
    let v = vault("oa", &[keep.clone(), gone]);
    let sk = start(&providers(&token.base, &up.url("")), &v, dir, &args);
    let c = TestClient::default();
    assert_eq!(oauth_connections(&c, &sk).await, 0, "state is made on use");
    for id in ["keep", "gone"] {
        assert_eq!(c.proxy(&sk.url(""), "/x", id, "i").await.status, 200);
    }
    assert_eq!(oauth_connections(&c, &sk).await, 2);

    // An editor's rename-on-save drops `gone`.
    let path = sk.path("vault.yaml");
    let tmp = path.with_file_name(".vault.yaml.tmp");
    std::fs::write(&tmp, vault("oa", &[keep])).expect("write temp");
    std::fs::rename(&tmp, &path).expect("rename");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while oauth_connections(&c, &sk).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed connection's state was kept:\n{}",
            sk.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.proxy(&sk.url(""), "/x", "gone", "i").await.status, 404);
    assert_eq!(c.proxy(&sk.url(""), "/x", "keep", "i").await.status, 200);
    assert_eq!(oauth_connections(&c, &sk).await, 1);
    assert_eq!(token.count(), 0, "no token call was needed");
    let seen: Vec<String> = up.requests().iter().map(bearer).collect();
    assert_eq!(seen, ["at-keep", "at-gone", "at-keep"]);
}
