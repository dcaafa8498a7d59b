//! Test support: real peers on 127.0.0.1 for integration tests.
//!
//! - [`ca`]: a certificate authority made in the test, and server certificates it signs.
//! - [`upstream`]: loopback upstream servers (HTTP/1.1, h2c, TLS with ALPN) that record what
//!   they received.
//! - [`sidekey`]: the real `sidekey` binary, started on random ports with config files written
//!   to a temporary directory; its log lines are collected for assertions. For what needs a
//!   process: signals, the CLI, SIGKILL, files changed under it.
//! - [`app`]: the same startup in-process ([`app::TestApp`]): listeners on the test's runtime,
//!   the app at hand, records applied through its writer, paused time when the test asks.
//! - [`client`]: a small HTTP client for driving sidekey.
#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod app;
pub mod ca;
pub mod client;
pub mod pg;
pub mod sidekey;
pub mod upstream;

/// The caller key every test sidekey accepts unless a test says otherwise.
pub const CALLER_KEY: &str = "test-caller-key-0123456789";

/// A TLS upstream for `api.test` signed by a CA made here, and the `--extra-ca` /
/// `--resolve` arguments that make sidekey trust it and find it on loopback. The directory
/// holding the CA file must outlive the sidekey started with those arguments.
pub async fn tls_upstream(
    handler: upstream::SyncHandler,
) -> (upstream::Upstream, tempfile::TempDir, Vec<String>) {
    let ca = ca::TestCa::new();
    let cert = ca.server_cert(&["api.test"]);
    let up = upstream::Upstream::start_tls(handler, cert.server_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path);
    let args = vec![
        "--extra-ca".to_string(),
        ca_path.to_str().expect("utf8").to_string(),
        "--resolve".to_string(),
        format!("api.test:443:127.0.0.1:{}", up.port()),
    ];
    (up, dir, args)
}

/// A running sidekey, in-process or the binary: what a test needs to call it.
pub trait Served {
    fn url(&self, path: &str) -> String;
    fn admin_url(&self, path: &str) -> String;
}

impl Served for sidekey::Sidekey {
    fn url(&self, path: &str) -> String {
        sidekey::Sidekey::url(self, path)
    }
    fn admin_url(&self, path: &str) -> String {
        sidekey::Sidekey::admin_url(self, path)
    }
}

impl Served for app::TestApp {
    fn url(&self, path: &str) -> String {
        app::TestApp::url(self, path)
    }
    fn admin_url(&self, path: &str) -> String {
        app::TestApp::admin_url(self, path)
    }
}
