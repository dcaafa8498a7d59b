//! Nango's own SDKs against the real binary, headless: `tests/node/connect.mjs` makes connect
//! sessions with `@nangohq/node` on the main listener and submits API keys and basic
//! credentials with `@nangohq/frontend` on the public Connect listener. Both listeners and the
//! verification upstream are on 127.0.0.1.
//!
//! The npm packages are installed by `.ci/run` (`npm ci` in `tests/node`, from its lock file);
//! without them this test fails and says how to install them.

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
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}/${{connectionConfig.region}}
    headers: {{x-api-key: "${{apiKey}}"}}
    verification: {{endpoints: [/me]}}
userpass:
  auth_mode: BASIC
  proxy:
    base_url: http://api.test:{port}
    verification: {{endpoints: [/whoami]}}
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
connections: []
"#;

/// The public listener's address from the "sidekey is serving" event.
fn connect_addr(logs: &str) -> Option<String> {
    logs.lines()
        .filter(|l| l.contains("sidekey is serving"))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("connect")?.as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nangos_node_and_frontend_sdks_connect_through_sidekey() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/@nangohq/frontend").is_dir()
            && dir.join("node_modules/@nangohq/node").is_dir(),
        "the npm packages are missing: run `npm ci` in tests/node (.ci/run does)"
    );
    let up = Upstream::start(Arc::new(|r: &Recorded| {
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
    let main_url = sk.url("");
    let public_url = format!("http://{connect}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("connect.mjs")
            .current_dir(&dir)
            .env("SIDEKEY_URL", main_url)
            .env("CONNECT_URL", public_url)
            .env("SECRET_KEY", CALLER_KEY)
            .env("GOOD_KEY", GOOD_KEY)
            .env("BAD_KEY", BAD_KEY)
            .output()
            .expect("run node (is Node.js 20+ installed?)")
    })
    .await
    .expect("node task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "connect.mjs failed ({}):\n{stdout}\n{}\nsidekey:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sk.logs()
    );
    let result: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the script's JSON line");
    assert_eq!(result["ok"], true);
    // The verification upstream saw both keys, each with its connection's config in the URL.
    let paths: Vec<String> = up.requests().iter().map(|r| r.uri.to_string()).collect();
    assert!(paths.contains(&"/eu/me".to_string()), "{paths:?}");
    assert!(paths.contains(&"/whoami".to_string()), "{paths:?}");
    // Neither the session tokens nor the credentials appear in sidekey's log, even at debug.
    let logs = sk.logs();
    assert!(logs.contains("connection made through Connect"), "{logs}");
    for secret in [
        result["token"].as_str().expect("token"),
        result["reconnect_token"].as_str().expect("token"),
        GOOD_KEY,
        BAD_KEY,
        "dXNlcjpwYXNz",
    ] {
        assert!(!logs.contains(secret), "a secret is in the log");
    }
}
