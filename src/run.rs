//! Serving, from settings to shutdown: [`run`] (what `sidekey serve` does once its flags are
//! parsed and its listeners bound), split into [`start`] (first run, load, build the
//! [`App`], start the reload loop) and [`Started::serve`] (the listeners until shutdown, then
//! the drain), so that tests can reach the app between the two.
//!
//! Nothing here reads the environment or installs signal handlers other than the reload's
//! SIGHUP: the caller passes the environment's keys in [`Settings`] and the shutdown as a
//! future, so an in-process test controls both.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::App;
use crate::cli::ServeArgs;
use crate::config::reload::Reloader;
use crate::config::sealed::EncryptionKey;
use crate::config::Paths;
use crate::credstore::CredStore;
use crate::oauth::OAuthOptions;
use crate::proxy::ProxyOptions;
use crate::upstream::{ClientOptions, UpstreamClient};

/// What `sidekey serve` was asked to do.
#[derive(Debug)]
pub struct Settings {
    /// The `serve` flags (or their `SIDEKEY_*` twins).
    pub serve: ServeArgs,
    /// Digests of the caller keys given outside the vault (`SIDEKEY_SECRET_KEY`).
    pub env_keys: Vec<[u8; 32]>,
    /// The key that opens the vault's sealed secrets (`SIDEKEY_ENCRYPTION_KEY`).
    pub encryption_key: Option<Arc<EncryptionKey>>,
    /// The key that signs auth webhooks (`SIDEKEY_WEBHOOK_SIGNING_KEY`).
    pub webhook_signing_key: Option<Arc<crate::secret::Secret>>,
}

/// The already-bound listeners: the proxy's, the admin one and the public Connect one.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    /// `--connect-listen`, when given.
    pub connect: Option<TcpListener>,
}

/// Why sidekey could not start; each message names what to fix, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--otlp-endpoint: {0}")]
    OtlpEndpoint(crate::otel::EndpointError),
    #[error("cannot create the vault {path}: {source}")]
    FirstRun {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration refused:\n{0}")]
    Config(String),
    #[error("{0}")]
    ExtraCa(crate::upstream::ClientTlsError),
    #[error("{0}")]
    Upstream(crate::upstream::ClientTlsError),
    #[error("{0}")]
    Otel(crate::otel::InitError),
    #[error("{0}")]
    ListenerTls(crate::tls::TlsError),
    #[error(transparent)]
    Credentials(#[from] crate::credstore::StateFileError),
    #[error(transparent)]
    Build(#[from] crate::app::BuildError),
    #[error("cannot read a listener's address: {0}")]
    Listener(std::io::Error),
    #[error("--webhook-url: {0}")]
    WebhookUrl(crate::webhooks::UrlError),
    #[error("--webhook-url needs SIDEKEY_WEBHOOK_SIGNING_KEY: receivers verify webhooks with it")]
    WebhookKey,
    #[error("cannot open the webhook outbox {path}: {source}")]
    Outbox {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--store: SIDEKEY_ENCRYPTION_KEY is not set; the store would hold secrets in plaintext. Set it (make one with `sidekey vault new-key`), or pass --allow-plaintext-store")]
    PlaintextStore,
    #[error(transparent)]
    Store(#[from] crate::store::postgres::PgError),
}

/// Serves until `shutdown` resolves, then drains: [`start`] followed by [`Started::serve`].
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Some(url) = settings.serve.store.clone() else {
        return start(settings)?.serve(listeners, shutdown).await;
    };
    // Loading from the database may take a while (it retries while the database is
    // unreachable): meanwhile the admin listener answers, /live 200 and /ready 503, through a
    // second handle on the same socket, and a SIGTERM ends the wait.
    let Listeners {
        proxy,
        admin,
        connect,
    } = listeners;
    let admin = admin.into_std().map_err(RunError::Listener)?;
    let loading = admin
        .try_clone()
        .and_then(TcpListener::from_std)
        .map_err(RunError::Listener)?;
    let admin = TcpListener::from_std(admin).map_err(RunError::Listener)?;
    let (_, admin_limits) = settings.serve.listener_limits();
    let probes = tokio::spawn(crate::admin::serve(
        loading,
        Arc::new(crate::admin::Health::default()),
        Arc::new(crate::metrics::Metrics::new()),
        admin_limits,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let started = tokio::select! {
        started = start_postgres(settings, url) => started,
        () = &mut shutdown => {
            probes.abort();
            tracing::info!("stopped before the store was loaded");
            return Ok(());
        }
    };
    probes.abort();
    started?
        .serve(
            Listeners {
                proxy,
                admin,
                connect,
            },
            shutdown,
        )
        .await
}

/// An app built and its reload loop running, not yet serving.
pub struct Started {
    pub app: Arc<App>,
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
    exporter: Option<crate::otel::Exporter>,
}

/// Creates the vault on first run, loads and validates the configuration, and builds the app
/// with its store, token manager and upstream pools. Must run inside a Tokio runtime.
pub fn start(settings: Settings) -> Result<Started, RunError> {
    let args = &settings.serve;
    // Checked before anything is created, so a typo leaves no trace on disk.
    let otlp_endpoint = match &args.otlp_endpoint {
        Some(url) => Some(crate::otel::traces_url(url).map_err(RunError::OtlpEndpoint)?),
        None => None,
    };
    let webhook_url = webhook_url(&settings)?;
    if let Some(key) =
        first_run(&args.files.vault, !settings.env_keys.is_empty()).map_err(|source| {
            RunError::FirstRun {
                path: args.files.vault.display().to_string(),
                source,
            }
        })?
    {
        // The one exception to "no secret in output": shown once, outside the log stream.
        eprintln!(
            "\nsidekey: created {} with a new caller key. Call the proxy with\n\n    Authorization: Bearer {key}\n\nThis key is shown only once; the vault stores only its SHA-256.\n",
            args.files.vault.display()
        );
    }
    let paths = Paths::new(
        args.files.providers.clone(),
        args.files.vault.clone(),
        args.files.state.clone(),
    );
    let reloader = Arc::new(
        Reloader::new(paths, settings.env_keys.clone(), args.reload_settle)
            .with_encryption_key(settings.encryption_key.clone()),
    );
    let paths = reloader.paths();
    let watch = reloader.watch();
    let snapshot = reloader.load_initial().map_err(|diags| {
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        RunError::Config(lines.join("\n"))
    })?;
    // The load's text and transient state are gone: give their pages back now, not at the
    // allocator's leisure (an idle sidecar would otherwise keep its load peak).
    crate::memory::release_freed();
    for w in snapshot.warnings.iter() {
        if crate::config::sealed::is_sealing_warning(w) {
            tracing::warn!(warning = %w, "configuration warning");
        } else {
            tracing::debug!(warning = %w, "configuration warning");
        }
    }
    if snapshot.secret_keys.is_empty() {
        tracing::warn!("no caller key configured: every request will get 401 unknown_account; set SIDEKEY_SECRET_KEY or add secret_keys (see `sidekey key new`)");
    }
    tracing::info!(
        generation = snapshot.generation,
        providers = %paths.providers_name(),
        vault = %paths.vault.display(),
        integrations = snapshot.integrations.len(),
        connections = snapshot.connection_count(),
        "configuration loaded"
    );
    if snapshot.connections.is_empty() {
        tracing::info!(
            "no connections yet: add an integration and a connection to {} (see the comments in it), then call e.g. `curl -H 'Authorization: Bearer <your key>' -H 'Connection-Id: user-123' -H 'Provider-Config-Key: my-github' http://{}/proxy/user`",
            paths.vault.display(),
            args.listen
        );
    }
    let Parts {
        client,
        exporter,
        options,
        tls,
    } = parts(args, otlp_endpoint.as_ref())?;
    let vault_for_writes = (!args.vault_read_only).then(|| paths.vault.clone());
    if vault_for_writes.is_none() && paths.state.is_none() {
        tracing::warn!("--vault-read-only without --state: refreshed OAuth credentials are kept in memory only");
    }
    // A writable vault is written by the store alone (refreshed tokens go through its writer,
    // below); the credential store keeps only the state file of a read-only vault.
    let credentials = CredStore::open(paths.state.clone()).map_err(RunError::Credentials)?;
    let backend = crate::store::file::FileStore::new(reloader.clone(), args.vault_read_only);
    let app = with_webhooks(App::builder(snapshot), &settings, paths, webhook_url, None)?
        .client(client)
        .options(options)
        .oauth(OAuthOptions {
            refresh_cooldown: args.refresh_cooldown,
        })
        .credentials(credentials)
        .store(Arc::new(backend))
        .connect(connect_options(args))
        .build()?;
    if let (Some(_), Some(writer)) = (&vault_for_writes, &app.writer) {
        app.state.oauth.use_store(Arc::new(writer.clone()));
    }
    reloader.spawn(app.state.clone(), watch);
    Ok(Started {
        app,
        settings,
        tls,
        exporter,
    })
}

/// [`start`] over the PostgreSQL store (`--store`): no vault file and no reload loop; the
/// records come from the database (connecting and migrating, retried with backoff while the
/// database is unreachable), providers.yaml from its file, and the store's LISTEN task keeps
/// the snapshot in step with the other replicas. Refreshed tokens are written through the
/// store's writer under its fleet-wide refresh lease.
pub async fn start_postgres(
    settings: Settings,
    url: crate::store::postgres::StoreUrl,
) -> Result<Started, RunError> {
    use crate::store::postgres::PgStore;
    let args = &settings.serve;
    let otlp_endpoint = match &args.otlp_endpoint {
        Some(url) => Some(crate::otel::traces_url(url).map_err(RunError::OtlpEndpoint)?),
        None => None,
    };
    let webhook_url = webhook_url(&settings)?;
    if settings.encryption_key.is_none() {
        if !args.allow_plaintext_store {
            return Err(RunError::PlaintextStore);
        }
        tracing::warn!("--allow-plaintext-store: secrets are stored in PostgreSQL unsealed");
    }
    let extra_ca = match &args.extra_ca {
        Some(ca) => crate::upstream::read_pem_certs(ca).map_err(RunError::ExtraCa)?,
        None => Vec::new(),
    };
    let paths = Paths::new(args.files.providers.clone(), args.files.vault.clone(), None);
    let providers_name = paths.providers_name();
    let providers = match &paths.providers {
        Some(p) => crate::config::limits::read_file(p)
            .map(|f| f.text)
            .map_err(|e| RunError::Config(format!("{providers_name}: {e}")))?,
        None => crate::config::BUNDLED_PROVIDERS.to_string(),
    };
    let catalog = crate::config::providers::Catalog::parse(&providers_name, &providers)
        .map_err(|d| RunError::Config(d.to_string()))?;
    let catalog = Arc::new(catalog);
    let opts = crate::config::BuildOptions {
        env_keys: settings.env_keys.clone(),
        generation: 1,
        encryption_key: settings.encryption_key.clone(),
        versions: None,
    };
    // The database may be starting too (a fleet and its database deployed together): retry
    // what may pass, fail at once on what will not (a bad URL, a newer schema, bad records).
    let mut backoff = std::time::Duration::from_millis(200);
    let (store, snapshot) = loop {
        let tls = crate::upstream::tls_config(&extra_ca).map_err(RunError::Upstream)?;
        let attempt = async {
            let store = PgStore::open(&url, tls, settings.encryption_key.clone(), 8).await?;
            if args.connection_cache > 0 {
                store.bound_cache(args.connection_cache);
            }
            let snapshot = store.load(catalog.clone(), &opts).await?;
            Ok::<_, crate::store::postgres::PgError>((store, snapshot))
        };
        match attempt.await {
            Ok(loaded) => break loaded,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "the store is not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    crate::memory::release_freed();
    if snapshot.secret_keys.is_empty() {
        tracing::warn!("no caller key configured: every request will get 401 unknown_account; set SIDEKEY_SECRET_KEY or add keys to the store");
    }
    tracing::info!(
        generation = snapshot.generation,
        providers = %providers_name,
        store = "postgres",
        integrations = snapshot.integrations.len(),
        connections = snapshot.connection_count(),
        connection_cache = args.connection_cache,
        "configuration loaded"
    );
    let Parts {
        client,
        exporter,
        options,
        tls,
    } = parts(args, otlp_endpoint.as_ref())?;
    // Connect sessions, OAuth states and the webhook outbox live in the store too, shared by
    // the fleet (any replica serves a session, any delivers an event).
    use crate::store::postgres::{outbox::PgOutbox, sessions::PgSessions};
    let outbox: Arc<dyn crate::webhooks::outbox::SharedOutbox> =
        Arc::new(PgOutbox::new(store.pool()));
    let builder = App::builder(snapshot).sessions(Arc::new(PgSessions::new(&store)));
    let app = with_webhooks(builder, &settings, &paths, webhook_url, Some(outbox.into()))?
        .client(client)
        .options(options)
        .oauth(OAuthOptions {
            refresh_cooldown: args.refresh_cooldown,
        })
        .store(store.clone())
        .connect(connect_options(args))
        .build()?;
    if let Some(writer) = &app.writer {
        app.state.oauth.use_store(Arc::new(writer.clone()));
        app.state.oauth.use_lease(store.lease());
        store.attach(app.state.clone(), writer.clone());
        if let Some(path) = paths.providers.clone() {
            tokio::spawn(watch_providers(
                path,
                providers_name.clone(),
                store.clone(),
                app.state.clone(),
            ));
        }
    }
    Ok(Started {
        app,
        settings,
        tls,
        exporter,
    })
}

/// providers.yaml in the PostgreSQL mode (no vault file, so no reload loop): looked at once a
/// second (a stat: device, inode, size, modification time, which also sees a Kubernetes
/// ConfigMap's symlink swap) and on SIGHUP; a changed file that parses is handed to the store,
/// which loads the records again over it; one that does not is refused with its problems
/// and the last good configuration keeps serving.
async fn watch_providers(
    path: std::path::PathBuf,
    name: String,
    store: Arc<crate::store::postgres::PgStore>,
    state: Arc<crate::state::State>,
) {
    use crate::atomic_file::FileStamp;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = FileStamp::read(&path);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
            () = hangup => true,
        };
        let now = FileStamp::read(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let parsed = crate::config::limits::read_file(&path)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|f| {
                crate::config::providers::Catalog::parse(&name, &f.text).map_err(|d| d.to_string())
            });
        let result = match parsed {
            Ok(catalog) => match store.reload_providers(Arc::new(catalog)).await {
                Ok(()) => Ok(()),
                Err(e @ crate::store::StoreError::Unavailable(_)) => {
                    // The database is down: try again on the next look.
                    seen = None;
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        if let Err(problem) = result {
            state.metrics.reload("failure");
            tracing::error!(file = %name, %problem,
                "providers.yaml not reloaded; the last good configuration keeps serving");
        }
    }
}

/// What serving needs besides the state, the same for every store: the upstream client, the
/// trace exporter, the request path's settings and the listener's TLS.
struct Parts {
    client: UpstreamClient,
    exporter: Option<crate::otel::Exporter>,
    options: ProxyOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn parts(args: &ServeArgs, otlp_endpoint: Option<&http::Uri>) -> Result<Parts, RunError> {
    let mut client_opts = ClientOptions {
        connect_timeout: args.connect_timeout,
        pool_idle_timeout: args.pool_idle_timeout,
        resolve: args.resolve.clone(),
        ..ClientOptions::default()
    };
    if let Some(ca) = &args.extra_ca {
        client_opts.extra_ca = crate::upstream::read_pem_certs(ca).map_err(RunError::ExtraCa)?;
    }
    let client = UpstreamClient::new(&client_opts).map_err(RunError::Upstream)?;
    let exporter = match otlp_endpoint {
        Some(endpoint) => {
            let otel = crate::otel::Settings {
                endpoint: endpoint.clone(),
                connection_id: args.otlp_connection_id,
            };
            let exporter =
                crate::otel::init(&otel, client.trusted.clone()).map_err(RunError::Otel)?;
            tracing::info!(endpoint = %endpoint, connection_id = args.otlp_connection_id.as_str(), "exporting traces over OTLP/HTTP");
            Some(exporter)
        }
        None => None,
    };
    let options = ProxyOptions {
        override_policy: args.base_url_override,
        response_timeout: args.response_timeout,
        idle_timeout: args.idle_timeout,
        retry_backoff_base: args.retry_backoff_base,
        retry_backoff_max: args.retry_backoff_max,
        retry_max_wait: args.retry_max_wait,
        retry_buffer_bytes: args.retry_buffer_bytes,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let store = crate::tls::CertStore::open(cert, key).map_err(RunError::ListenerTls)?;
            store.watch();
            Some(crate::tls::server_config(store).map_err(RunError::ListenerTls)?)
        }
        _ => None,
    };
    Ok(Parts {
        client,
        exporter,
        options,
        tls,
    })
}

impl Started {
    /// Starts the reload loop, serves the admin listener and the proxy listener until
    /// `shutdown` resolves, drains the proxy's connections, and flushes the trace exporter.
    pub async fn serve(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let args = &self.settings.serve;
        let nofile = crate::server::raise_nofile_limit();
        let (mut limits, admin_limits) = args.listener_limits();
        let fitted = crate::server::fit_max_connections(
            limits.max_connections,
            admin_limits.max_connections,
            nofile,
        );
        if fitted < limits.max_connections {
            if args.max_connections.is_some() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    open_file_limit = nofile,
                    "--max-connections leaves less than half the open-file limit for upstream connections; under full load sidekey may run out of file descriptors"
                );
            } else {
                tracing::info!(
                    max_connections = fitted,
                    open_file_limit = nofile,
                    "connection limit fitted to half the open-file limit"
                );
                limits.max_connections = fitted;
            }
        }
        let health = Arc::new(crate::admin::Health::default());
        let Listeners {
            proxy,
            admin,
            connect,
        } = listeners;
        let connect_addr = match &connect {
            Some(l) => Some(l.local_addr().map_err(RunError::Listener)?),
            None => None,
        };
        let proxy_addr = proxy.local_addr().map_err(RunError::Listener)?;
        // Without --public-url, connect links point at the listener end users reach.
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // The main listener serves the Connect UI under /connect/, the public one at its root.
        let _ = self.app.connect.callback_base.set(match &args.public_url {
            Some(url) => url.clone(),
            None => format!("{scheme}://{}", connect_addr.unwrap_or(proxy_addr)),
        });
        let _ = self.app.connect.public_url.set(match connect_addr {
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://{proxy_addr}/connect"),
        });
        tracing::info!(
            listen = %proxy_addr,
            admin = %admin.local_addr().map_err(RunError::Listener)?,
            connect = connect_addr.map(|a| a.to_string()),
            tls = self.tls.is_some(),
            "sidekey is serving"
        );
        tokio::spawn(crate::admin::serve(
            admin,
            health.clone(),
            self.app.metrics().clone(),
            admin_limits,
        ));
        health.set_ready(true);
        let shutdown = {
            let health = health.clone();
            async move {
                shutdown.await;
                health.set_ready(false);
                tracing::info!("shutting down: draining in-flight requests");
            }
        };
        // The Connect listener stops and drains with the proxy listener.
        let (stop_connect, connect_stopping) = tokio::sync::watch::channel(false);
        let connect_task = connect.map(|listener| {
            let mut stopping = connect_stopping.clone();
            tokio::spawn(crate::server::serve(
                listener,
                crate::server::Role::Connect,
                self.app.clone(),
                self.tls.clone(),
                limits.clone(),
                async move {
                    let _ = stopping.wait_for(|s| *s).await;
                },
                args.drain_timeout,
            ))
        });
        let shutdown = async move {
            shutdown.await;
            let _ = stop_connect.send(true);
        };
        crate::server::serve(
            proxy,
            crate::server::Role::Main,
            self.app.clone(),
            self.tls.clone(),
            limits,
            shutdown,
            args.drain_timeout,
        )
        .await;
        if let Some(task) = connect_task {
            let _ = task.await;
        }
        // After the drain, so the spans of the last requests are in the final batch.
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `--webhook-url`, checked by the address policy; it needs `SIDEKEY_WEBHOOK_SIGNING_KEY`.
fn webhook_url(settings: &Settings) -> Result<Option<String>, RunError> {
    let args = &settings.serve;
    match &args.webhook_url {
        Some(u) if !u.trim().is_empty() => {
            crate::webhooks::check_url(u, args.webhook_allow_private)
                .map_err(RunError::WebhookUrl)?;
            if settings.webhook_signing_key.is_none() {
                return Err(RunError::WebhookKey);
            }
            Ok(Some(u.trim().to_string()))
        }
        _ => Ok(None),
    }
}

/// Turns auth webhooks on when a signing key is set (events for connections whose own
/// `webhook_url_override` names a receiver are sent even without `--webhook-url`).
fn with_webhooks(
    builder: crate::app::AppBuilder,
    settings: &Settings,
    paths: &Paths,
    url: Option<String>,
    shared: Option<crate::webhooks::outbox::Store>,
) -> Result<crate::app::AppBuilder, RunError> {
    let args = &settings.serve;
    let Some(key) = &settings.webhook_signing_key else {
        return Ok(builder);
    };
    let outbox = match shared {
        Some(o) => {
            if args.webhook_outbox.is_some() {
                tracing::warn!(
                    "--webhook-outbox is ignored with --store: events wait in the store"
                );
            }
            o
        }
        None => open_outbox(args, paths)?.into(),
    };
    tracing::info!(
        url = url.is_some(),
        outbox = outbox.kind(),
        "auth webhooks on"
    );
    Ok(builder.webhooks(
        crate::webhooks::Settings {
            url,
            signing_key: Some(key.clone()),
            environment: args.webhook_environment.clone(),
            allow_private: args.webhook_allow_private,
            retry_base: args.webhook_retry_base,
            retry_max: args.webhook_retry_max,
            timeout: args.webhook_timeout,
            give_up_after: args.webhook_give_up_after,
        },
        outbox,
    ))
}

/// The webhook outbox: `--webhook-outbox` (which must open), else beside the vault (or, for a
/// read-only vault, beside the state file), else memory. A default place that cannot be
/// written (a vault on a read-only Secret mount that was not flagged `--vault-read-only`)
/// falls back to memory with a warning rather than refusing to start.
fn open_outbox(
    args: &ServeArgs,
    paths: &Paths,
) -> Result<Arc<dyn crate::webhooks::outbox::Outbox>, RunError> {
    use crate::webhooks::outbox::{FileOutbox, MemoryOutbox, Outbox};
    let open =
        |path: &std::path::Path| FileOutbox::open(path).map(|o| Arc::new(o) as Arc<dyn Outbox>);
    if let Some(path) = &args.webhook_outbox {
        return open(path).map_err(|source| RunError::Outbox {
            path: path.display().to_string(),
            source,
        });
    }
    let beside = |p: &std::path::Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".outbox");
        std::path::PathBuf::from(s)
    };
    let default = match (args.vault_read_only, &paths.state) {
        (false, _) => Some(beside(&paths.vault)),
        (true, Some(state)) => Some(beside(state)),
        (true, None) => None,
    };
    if let Some(path) = default {
        match open(&path) {
            Ok(o) => return Ok(o),
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "cannot open the webhook outbox; webhook events wait in memory only (set --webhook-outbox to a writable file)"),
        }
    } else {
        tracing::warn!("--vault-read-only without --state or --webhook-outbox: webhook events wait in memory only; a restart loses undelivered ones");
    }
    Ok(Arc::new(MemoryOutbox::default()))
}

/// The Connect flow's settings from the flags.
fn connect_options(args: &ServeArgs) -> crate::app::ConnectOptions {
    let options = crate::app::ConnectOptions {
        session_ttl: args.connect_session_ttl,
        max_attempts: u32::try_from(args.connect_max_attempts).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if let Some(url) = &args.public_url {
        let _ = options.public_url.set(url.clone());
    }
    options
}

const NEW_VAULT_HELP: &str = "\
# sidekey vault: integrations, connections and the SHA-256 of caller keys.
# Add an integration (a provider from providers.yaml) and a connection, e.g.:
#
# integrations:
#   - unique_key: my-github
#     provider: github-pat
# connections:
#   - connection_id: user-123
#     provider_config_key: my-github
#     credentials: {type: API_KEY, apiKey: \"ghp_...\"}
#
# sidekey reloads this file when it changes. `sidekey check` validates it.
";

/// Creates the vault (0600) when it does not exist yet; returns the caller key generated for
/// it, unless the environment already supplies one.
fn first_run(vault: &std::path::Path, have_env_key: bool) -> std::io::Result<Option<String>> {
    if vault.exists() {
        return Ok(None);
    }
    let key = (!have_env_key).then(crate::auth::new_key);
    let mut text = NEW_VAULT_HELP.to_string();
    match &key {
        Some(k) => text.push_str(&format!(
            "secret_keys:\n  - sha256: \"{}\"\n    label: generated on first run\n",
            hex::encode(crate::auth::digest(k))
        )),
        None => text.push_str("secret_keys: []\n"),
    }
    text.push_str("integrations: []\nconnections: []\n");
    crate::atomic_file::write(vault, text.as_bytes(), 0o600)?;
    Ok(key)
}
