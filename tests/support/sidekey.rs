//! The real `sidekey` binary, started for one test.
//!
//! Config files go to a fresh temporary directory; the proxy and admin listeners bind port 0 and
//! their addresses are read from the JSON "sidekey is serving" log event. Every line the process
//! writes is kept, so tests can assert on logs (and grep them for secrets).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::CALLER_KEY;

pub struct SidekeyBuilder {
    providers: String,
    vault: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
}

/// Starts building a sidekey with these providers.yaml and vault.yaml contents.
pub fn sidekey(providers: &str, vault: &str) -> SidekeyBuilder {
    SidekeyBuilder {
        providers: providers.to_string(),
        vault: vault.to_string(),
        args: Vec::new(),
        env: vec![("SIDEKEY_SECRET_KEY".into(), CALLER_KEY.into())],
        dir: None,
    }
}

impl SidekeyBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(ek, _)| ek != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn no_env(mut self, k: &str) -> Self {
        self.env.retain(|(ek, _)| ek != k);
        self
    }

    /// Uses an existing directory (e.g. to restart on the same files).
    pub fn in_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Writes the files and starts the process; waits until it serves.
    pub fn start(self) -> Sidekey {
        let dir = self
            .dir
            .unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let providers = dir.path().join("providers.yaml");
        let vault = dir.path().join("vault.yaml");
        std::fs::write(&providers, &self.providers).expect("write providers");
        std::fs::write(&vault, &self.vault).expect("write vault");
        let mut args = vec![
            "serve".to_string(),
            "--listen=127.0.0.1:0".into(),
            "--admin-listen=127.0.0.1:0".into(),
            "--log-format=json".into(),
            format!("--providers={}", providers.display()),
            format!("--vault={}", vault.display()),
        ];
        args.extend(self.args);
        Sidekey::spawn(dir, &args, &self.env)
    }
}

pub struct Sidekey {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: Option<tempfile::TempDir>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Sidekey {
    /// Spawns the binary with exactly these arguments and environment (plus RUST_LOG).
    pub fn spawn(dir: tempfile::TempDir, args: &[String], env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SIDEKEY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sidekey");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().expect("lock").push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = find_addrs(&logs.lock().expect("lock"));
            if let Some((addr, admin)) = found {
                return Self {
                    child,
                    addr,
                    admin,
                    dir: Some(dir),
                    logs,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "sidekey exited early ({status}):\n{}",
                    logs.lock().expect("lock").join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "sidekey did not start:\n{}",
                logs.lock().expect("lock").join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// All output so far, one line each.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .logs
                .lock()
                .expect("lock")
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal to the process (e.g. "TERM", "HUP").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident set size (VmHWM) in KiB.
    /// The process's resident set now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Takes the temp dir so it outlives this process (for restarts).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        self.dir.take().expect("dir")
    }
}

impl Drop for Sidekey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_addrs(lines: &[String]) -> Option<(SocketAddr, SocketAddr)> {
    for line in lines {
        if !line.contains("sidekey is serving") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let listen = v.get("listen")?.as_str()?.parse().ok()?;
        let admin = v.get("admin")?.as_str()?.parse().ok()?;
        return Some((listen, admin));
    }
    None
}

/// Runs `sidekey` with arguments to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], dir: &Path) -> (i32, String, String) {
    run_cli_env(args, dir, &[])
}

/// [`run_cli`] with these `SIDEKEY_*` variables set (and no others).
pub fn run_cli_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDEKEY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sidekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary under test: this build's, or `SIDEKEY_TEST_BIN` (measurements run a release
/// binary from a debug test build, which is quicker to build).
fn bin() -> std::ffi::OsString {
    std::env::var_os("SIDEKEY_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sidekey").into())
}
