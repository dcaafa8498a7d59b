//! Nango's own SDKs against the real binary, headless: `tests/node/connect.mjs` makes connect
//! sessions with `@nangohq/node` on the main listener and submits API keys and basic
//! credentials with `@nangohq/frontend` on the public Connect listener. Both listeners and the
//! verification upstream are on 127.0.0.1.
//!
//! `tests/node/browser.mjs` drives the Connect UI in headless Chromium (Debian's
//! `/usr/bin/chromium` through `playwright-core`): the page at `connect_link` by mouse and by
//! keyboard, embedded by the frontend SDK's `openConnectUI`, the OAuth2 flow in its popup
//! against a loopback authorization server and token endpoint, and the SDK's `nango.auth()`
//! OAuth popup with its WebSocket. Screenshots go to
//! `target/connect-ui/`.
//!
//! The npm packages are installed by `.ci/run` (`npm ci` in `tests/node`, from its lock file),
//! and so is Chromium; without them these tests fail and say how to install them.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::sidekey::sidekey;
use support::upstream::{reply, Recorded, Upstream};
use support::CALLER_KEY;

const GOOD_KEY: &str = "sk_node_good_0123456789";
const BAD_KEY: &str = "sk_node_bad_9876543210";

fn providers(port: u16) -> String {
    format!(
        r#"
keyed:
  display_name: Keyed API
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}/${{connectionConfig.region}}
    headers: {{x-api-key: "${{apiKey}}"}}
    verification: {{endpoints: [/me]}}
userpass:
  display_name: User Pass
  auth_mode: BASIC
  proxy:
    base_url: http://api.test:{port}
    verification: {{endpoints: [/whoami]}}
oauthp:
  display_name: OAuth Provider
  auth_mode: OAUTH2
  authorization_url: http://127.0.0.1:{port}/authorize
  token_url: http://api.test:{port}/token
  proxy:
    base_url: http://api.test:{port}
untested:
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}
    headers: {{x-api-key: "${{apiKey}}"}}
"#
    )
}

const VAULT: &str = r#"
integrations:
  - {unique_key: keyed, provider: keyed}
  - {unique_key: basic, provider: userpass}
  - {unique_key: untested, provider: untested}
  - unique_key: oauthi
    provider: oauthp
    credentials: {type: OAUTH2, oauth_client_id: cid-1, oauth_client_secret: csecret-1, scopes: read}
connections: []
"#;

/// The public listener's address from the "sidekey is serving" event.
fn connect_addr(logs: &str) -> Option<String> {
    logs.lines()
        .filter(|l| l.contains("sidekey is serving"))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("connect")?.as_str().map(str::to_string))
}

struct Running {
    up: Upstream,
    sk: support::sidekey::Sidekey,
    public_url: String,
}

/// The binary with a public listener, and its loopback verification upstream.
async fn start() -> Running {
    let up = Upstream::start(Arc::new(|r: &Recorded| {
        // A fake authorization server: consent is given at once, back to the redirect URI.
        if r.uri.path() == "/authorize" {
            let q = r.uri.query().unwrap_or_default();
            let get = |name: &str| {
                q.split('&').find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k == name).then(|| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                })
            };
            let (Some(redirect), Some(state)) = (get("redirect_uri"), get("state")) else {
                return reply(400, "no redirect_uri or state");
            };
            let mut res = reply(302, "");
            let to = format!("{redirect}?code=good-code&state={state}");
            res.headers_mut()
                .insert("location", to.parse().expect("location"));
            return res;
        }
        if r.uri.path() == "/token" {
            let form = String::from_utf8_lossy(&r.body).to_string();
            return if form.contains("code=good-code") && form.contains("code_verifier=") {
                reply(200, r#"{"access_token":"at-browser","expires_in":3600}"#)
            } else {
                reply(400, r#"{"error":"invalid_grant"}"#)
            };
        }
        let ok = r.header("x-api-key") == Some(GOOD_KEY)
            || r.header("authorization") == Some("Basic dXNlcjpwYXNz");
        reply(if ok { 200 } else { 401 }, "{}")
    }))
    .await;
    let port = up.port();
    let sk = sidekey(&providers(port), VAULT)
        .arg("--connect-listen=127.0.0.1:0")
        .arg(format!("--resolve=api.test:{port}:127.0.0.1"))
        .env("RUST_LOG", "debug")
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let connect = loop {
        if let Some(a) = connect_addr(&sk.logs()) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no connect listener:\n{}",
            sk.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Running {
        up,
        sk,
        public_url: format!("http://{connect}"),
    }
}

fn node_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/@nangohq/frontend").is_dir()
            && dir.join("node_modules/@nangohq/node").is_dir()
            && dir.join("node_modules/playwright-core").is_dir(),
        "the npm packages are missing: run `npm ci` in tests/node (.ci/run does)"
    );
    dir
}

/// Runs `script` in tests/node against `run`; its last JSON line.
async fn node(script: &'static str, run: &Running) -> serde_json::Value {
    let dir = node_dir();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/connect-ui");
    let (main_url, public_url) = (run.sk.url(""), run.public_url.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .env("SIDEKEY_URL", main_url)
            .env("CONNECT_URL", public_url)
            .env("SECRET_KEY", CALLER_KEY)
            .env("GOOD_KEY", GOOD_KEY)
            .env("BAD_KEY", BAD_KEY)
            .env("SCREENSHOTS", shots)
            .output()
            .expect("run node (is Node.js 20+ installed?)")
    })
    .await
    .expect("node task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}\nsidekey:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        run.sk.logs()
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the script's JSON line")
}

/// Neither the session tokens nor the credentials appear in sidekey's log, even at debug.
fn assert_no_secret_logged(run: &Running, tokens: &[&str]) {
    let logs = run.sk.logs();
    assert!(logs.contains("connection made through Connect"), "{logs}");
    for secret in tokens
        .iter()
        .copied()
        .chain([GOOD_KEY, BAD_KEY, "dXNlcjpwYXNz"])
    {
        assert!(!logs.contains(secret), "a secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nangos_node_and_frontend_sdks_connect_through_sidekey() {
    let run = start().await;
    let result = node("connect.mjs", &run).await;
    assert_eq!(result["ok"], true);
    // The verification upstream saw both keys, each with its connection's config in the URL.
    let paths: Vec<String> = run
        .up
        .requests()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    assert!(paths.contains(&"/eu/me".to_string()), "{paths:?}");
    assert!(paths.contains(&"/whoami".to_string()), "{paths:?}");
    let tokens = [
        result["token"].as_str().expect("token"),
        result["reconnect_token"].as_str().expect("token"),
    ];
    assert_no_secret_logged(&run, &tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_ui_works_in_chromium_standalone_and_in_open_connect_ui() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install -y chromium (.ci/run does)"
    );
    let run = start().await;
    let result = node("browser.mjs", &run).await;
    assert_eq!(result["ok"], true);
    let tokens: Vec<&str> = result["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tokens.len(), 5);
    assert_no_secret_logged(&run, &tokens);
}
