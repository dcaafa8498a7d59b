//! sidekey in-process: the same `sidekey::run::start` and `Started::serve` the binary runs,
//! on 127.0.0.1 listeners bound here, inside the test's own runtime.
//!
//! No child process and no log scraping: the test holds the [`App`] (its snapshot, metrics and
//! writer), applies records through the same writer the API uses ([`TestApp::apply`]), and
//! stops the app by resolving its shutdown future. Because everything runs on the test's
//! runtime, `#[tokio::test(start_paused = true)]` makes sidekey's own timers (backoff,
//! Retry-After) virtual too. Tests about the process itself (signals, CLI, SIGKILL, reload of
//! files by another process) keep using [`super::sidekey`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sidekey::app::App;
use sidekey::config::{vault, Change, Snapshot};
use sidekey::store::Write;
use tokio::sync::oneshot;

use super::CALLER_KEY;

/// Starts building an in-process sidekey with these providers.yaml and vault.yaml contents.
pub fn test_app(providers: &str, vault: &str) -> TestAppBuilder {
    TestAppBuilder {
        providers: providers.to_string(),
        vault: vault.to_string(),
        args: Vec::new(),
        webhook_key: None,
        connect: false,
    }
}

pub struct TestAppBuilder {
    providers: String,
    vault: String,
    args: Vec<String>,
    webhook_key: Option<String>,
    connect: bool,
}

impl TestAppBuilder {
    /// What `SIDEKEY_WEBHOOK_SIGNING_KEY` gives the binary.
    pub fn webhook_signing_key(mut self, key: &str) -> Self {
        self.webhook_key = Some(key.to_string());
        self
    }

    /// A `serve` flag, as the binary would take it.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Also binds a public Connect listener (what `--connect-listen` gives the binary).
    pub fn connect_listener(mut self) -> Self {
        self.connect = true;
        self
    }

    /// Writes the files to a fresh directory, builds the app through `sidekey::run::start`
    /// (the binary's path: first run, load, builder, reload loop) and serves it on two
    /// listeners bound to 127.0.0.1 port 0. Must be called inside a Tokio runtime.
    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = dir.path().join("providers.yaml");
        let vault = dir.path().join("vault.yaml");
        std::fs::write(&providers, &self.providers).expect("write providers");
        std::fs::write(&vault, &self.vault).expect("write vault");
        let mut argv = vec![
            "sidekey".to_string(),
            "serve".to_string(),
            format!("--providers={}", providers.display()),
            format!("--vault={}", vault.display()),
        ];
        argv.extend(self.args);
        // Flags are parsed by the binary's own parser, so defaults are the binary's; but no
        // `SIDEKEY_*` variable of the test's environment is read (they would leak into it).
        let cli = sidekey::cli::Cli::parse_ignoring_env(&argv).expect("serve flags");
        let serve = match cli.command {
            Some(sidekey::cli::Command::Serve(args)) => *args,
            _ => unreachable!("argv starts with `serve`"),
        };
        let settings = sidekey::Settings {
            serve,
            // What SIDEKEY_SECRET_KEY gives the binary harness; no process environment read.
            env_keys: vec![sidekey::auth::digest(CALLER_KEY)],
            encryption_key: None,
            webhook_signing_key: self
                .webhook_key
                .clone()
                .map(|k| Arc::new(sidekey::secret::Secret::new(k))),
        };
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy listener");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the admin listener");
        let (addr, admin_addr) = (
            proxy.local_addr().expect("addr"),
            admin.local_addr().expect("addr"),
        );
        // The public Connect listener, when the test asked for one.
        let connect = if self.connect {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the connect listener"),
            )
        } else {
            None
        };
        let connect_addr = connect.as_ref().map(|l| l.local_addr().expect("addr"));
        let started = sidekey::run::start(settings).expect("sidekey starts");
        let app = started.app.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            started
                .serve(
                    sidekey::Listeners {
                        proxy,
                        admin,
                        connect,
                    },
                    shutdown,
                )
                .await
        });
        TestApp {
            app,
            addr,
            admin: admin_addr,
            connect: connect_addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

pub struct TestApp {
    /// The app the listeners serve: its snapshot, metrics and writer.
    pub app: Arc<App>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The public Connect listener, when [`TestAppBuilder::connect_listener`] asked for it.
    pub connect: Option<SocketAddr>,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sidekey::RunError>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A URL on the public Connect listener.
    pub fn connect_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.connect.expect("a connect listener"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The snapshot serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.app.state.snapshot.load_full()
    }

    /// Applies records written as a vault fragment (`integrations:` and `connections:` lists)
    /// through the app's writer, as an API write would: durable in the vault and serving when
    /// this returns. Returns the snapshot that includes them.
    pub async fn apply(&self, records: &str) -> Arc<Snapshot> {
        let raw = vault::parse("records", records).expect("records parse");
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(raw.integrations.into_iter().map(Change::PutIntegration));
        changes.extend(
            raw.connections
                .into_iter()
                .map(|c| Change::PutConnection(c, 0)),
        );
        changes.extend(raw.secret_keys.into_iter().map(Change::PutKey));
        let writer = self.app.writer.as_ref().expect("the app has a store");
        writer
            .write(Write::new(changes))
            .await
            .expect("the write commits")
    }

    /// Resolves the shutdown future and waits for the drain to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve ends cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that did not call `stop` still ends its listeners with the runtime.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
