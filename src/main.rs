//! The `sidekey` binary: parse the command line, set up logging, load and validate the
//! configuration, bind, serve, and drain on SIGTERM/SIGINT. Everything else is in the library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use sidekey::cli::{Cli, Command, FileArgs, KeyCommand, ServeArgs, VaultCommand, VaultFileArgs};
use sidekey::config::reload::Reloader;
use sidekey::config::{self, BuildOptions, Paths, Severity};
use sidekey::credstore::CredStore;
use sidekey::oauth::endpoint::HttpTokenEndpoint;
use sidekey::oauth::{OAuthOptions, TokenManager};
use sidekey::proxy::client::{ClientOptions, UpstreamClient};
use sidekey::proxy::{App, ProxyOptions};
use sidekey::sealed::{self, EncryptionKey};

/// mimalloc: a proxy allocates and frees many small, short-lived buffers per request, which
/// mimalloc's thread-local free lists serve faster than glibc's malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(files)) => check(&files),
        Some(Command::Key(KeyCommand::New { scopes })) => {
            if let Err(unknown) = sidekey::auth::Scopes::parse(&scopes) {
                eprintln!(
                    "sidekey: unknown scope `{unknown}` (known: {})",
                    sidekey::auth::Scope::NAMES.join(", ")
                );
                return ExitCode::from(2);
            }
            let key = sidekey::auth::new_key();
            println!("{key}");
            println!("sha256: {}", hex::encode(sidekey::auth::digest(&key)));
            if !scopes.is_empty() {
                println!("scopes: [{}]", scopes.join(", "));
            }
            ExitCode::SUCCESS
        }
        Some(Command::Vault(cmd)) => vault(cmd),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

/// Digests of the keys in `SIDEKEY_SECRET_KEY` (comma-separated).
fn env_keys() -> Vec<[u8; 32]> {
    std::env::var("SIDEKEY_SECRET_KEY")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(sidekey::auth::digest)
        .collect()
}

fn paths(files: &FileArgs) -> Paths {
    Paths::new(
        files.providers.clone(),
        files.vault.clone(),
        files.state.clone(),
    )
}

/// `SIDEKEY_ENCRYPTION_KEY`, if set; a malformed key is an error (never shown).
fn encryption_key() -> Result<Option<Arc<EncryptionKey>>, sealed::KeyError> {
    EncryptionKey::from_env().map(|k| k.map(Arc::new))
}

fn check(files: &FileArgs) -> ExitCode {
    let paths = paths(files);
    let key = match encryption_key() {
        Ok(k) => k,
        Err(e) => {
            println!("{e}");
            eprintln!("check failed: 1 error(s)");
            return ExitCode::FAILURE;
        }
    };
    let opts = BuildOptions {
        env_keys: env_keys(),
        generation: 0,
        encryption_key: key,
    };
    let result = config::load_files(&paths).and_then(|src| config::snapshot::build(&src, &opts));
    match result {
        Ok(snapshot) => {
            for w in snapshot.warnings.iter() {
                println!("{w}");
            }
            println!(
                "ok: {} integrations, {} connections, {} caller keys",
                snapshot.integrations.len(),
                snapshot.connection_count(),
                snapshot.secret_keys.len()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("check failed: {errors} error(s)");
            ExitCode::FAILURE
        }
    }
}

fn vault(cmd: VaultCommand) -> ExitCode {
    let result = match cmd {
        VaultCommand::NewKey => EncryptionKey::generate_base64()
            .map(|k| println!("{}", k.as_str()))
            .map_err(|e| e.to_string()),
        VaultCommand::Encrypt(files) => vault_encrypt(&files),
        VaultCommand::Rekey(files) => vault_rekey(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekey: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The key in `var`, which this command cannot do without.
fn required_key(var: &'static str, what: &str) -> Result<Arc<EncryptionKey>, String> {
    match EncryptionKey::from_env_var(var) {
        Ok(Some(k)) => Ok(Arc::new(k)),
        Ok(None) => Err(format!(
            "{var} is not set: it must hold {what} (make a key with `sidekey vault new-key`)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn vault_encrypt(files: &VaultFileArgs) -> Result<(), String> {
    let key = required_key(sealed::ENV_KEY, "the key to seal the vault with")?;
    let (file, summary) = reseal_file(files, &key, &key, |s| s.opened < s.sealed)?;
    match summary {
        Some(s) => println!(
            "{file}: {} secret value(s) sealed ({} of them were sealed already)",
            s.sealed, s.opened
        ),
        None => println!("{file}: every secret value is sealed already; nothing was written"),
    }
    Ok(())
}

fn vault_rekey(files: &VaultFileArgs) -> Result<(), String> {
    let old = required_key(sealed::ENV_KEY, "the vault's current key")?;
    let new = required_key(sealed::ENV_NEW_KEY, "the new key")?;
    let (file, summary) = reseal_file(files, &old, &new, |s| s.sealed > 0)?;
    match summary {
        Some(s) => println!(
            "{file}: {} secret value(s) sealed with the new key; set {} to it from now on",
            s.sealed,
            sealed::ENV_KEY
        ),
        None => println!("{file}: the vault holds no secret values; nothing was written"),
    }
    Ok(())
}

/// Checks the vault as `sidekey check` does (opening it with `old`), seals every secret with
/// `new`, and replaces the file in one atomic write if `worth_writing` says so. Returns the
/// vault's name and what was written.
fn reseal_file(
    files: &VaultFileArgs,
    old: &Arc<EncryptionKey>,
    new: &EncryptionKey,
    worth_writing: impl Fn(&sealed::ResealSummary) -> bool,
) -> Result<(String, Option<sealed::ResealSummary>), String> {
    let paths = Paths::new(files.providers.clone(), files.vault.clone(), None);
    let src = config::load_files(&paths).map_err(lines)?;
    // The same checks as `sidekey check`, so a vault is never rewritten while it is broken.
    let opts = BuildOptions {
        env_keys: env_keys(),
        generation: 0,
        encryption_key: Some(old.clone()),
    };
    config::snapshot::build(&src, &opts).map_err(|d| {
        format!(
            "{}\nthe vault was not changed: fix it first (see `sidekey check`)",
            lines(d)
        )
    })?;
    let (text, summary) = sealed::reseal_text(&src.vault_name, &src.vault, Some(old.as_ref()), new)
        .map_err(|e| match e {
            sealed::ResealError::Parse(d) => d.to_string(),
            e => format!("{}: {e}", src.vault_name),
        })?;
    if !worth_writing(&summary) {
        return Ok((src.vault_name, None));
    }
    // Through a symlink to its target, as the credential writer does.
    let target =
        std::fs::canonicalize(&files.vault).map_err(|e| format!("{}: {e}", src.vault_name))?;
    // A sidekey that refreshed a token meanwhile must not lose its write to ours.
    let now = std::fs::read_to_string(&target).map_err(|e| format!("{}: {e}", src.vault_name))?;
    if now != src.vault {
        return Err(format!(
            "{}: the file changed while it was being sealed; nothing was written, run the command again",
            src.vault_name
        ));
    }
    sidekey::atomic_file::write(&target, text.as_bytes(), 0o600)
        .map_err(|e| format!("{}: cannot write: {e}", src.vault_name))?;
    Ok((src.vault_name, Some(summary)))
}

fn lines(diags: Vec<config::Diagnostic>) -> String {
    let v: Vec<String> = diags.iter().map(ToString::to_string).collect();
    v.join("\n")
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

/// Creates the vault on first run; returns a freshly generated caller key if one was made.
fn first_run(files: &FileArgs, have_env_key: bool) -> anyhow::Result<Option<String>> {
    if files.vault.exists() {
        return Ok(None);
    }
    let key = (!have_env_key).then(sidekey::auth::new_key);
    let mut text = NEW_VAULT_HELP.to_string();
    match &key {
        Some(k) => text.push_str(&format!(
            "secret_keys:\n  - sha256: \"{}\"\n    label: generated on first run\n",
            hex::encode(sidekey::auth::digest(k))
        )),
        None => text.push_str("secret_keys: []\n"),
    }
    text.push_str("integrations: []\nconnections: []\n");
    sidekey::atomic_file::write(&files.vault, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot create the vault {}", files.vault.display()))?;
    Ok(key)
}

fn serve(args: ServeArgs) -> ExitCode {
    sidekey::telemetry::init(args.log_format);
    // One worker: a current-thread runtime skips the work-stealing scheduler's cross-thread
    // bookkeeping, which a sidecar pinned to one core pays on every wake-up for nothing.
    let mut rt = match args.worker_threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidekey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekey: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before anything is created, so a typo leaves no trace on disk.
    let otlp_endpoint = match &args.otlp_endpoint {
        Some(url) => Some(
            sidekey::otel::traces_url(url).map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?,
        ),
        None => None,
    };
    let env_keys = env_keys();
    // Read before anything is written, so a malformed key leaves no new vault behind.
    let encryption_key = encryption_key()?;
    if let Some(key) = first_run(&args.files, !env_keys.is_empty())? {
        // The one exception to "no secret in output": shown once, outside the log stream.
        eprintln!(
            "\nsidekey: created {} with a new caller key. Call the proxy with\n\n    Authorization: Bearer {key}\n\nThis key is shown only once; the vault stores only its SHA-256.\n",
            args.files.vault.display()
        );
    }
    let reloader = Arc::new(
        Reloader::new(paths(&args.files), env_keys, args.reload_settle)
            .with_encryption_key(encryption_key),
    );
    let paths = reloader.paths();
    let watch = reloader.watch();
    let snapshot = reloader.load_initial().map_err(|diags| {
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("configuration refused:\n{}", lines.join("\n"))
    })?;
    for w in snapshot.warnings.iter() {
        if sealed::is_sealing_warning(w) {
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
    let mut client_opts = ClientOptions {
        connect_timeout: args.connect_timeout,
        pool_idle_timeout: args.pool_idle_timeout,
        resolve: args.resolve.clone(),
        ..ClientOptions::default()
    };
    if let Some(ca) = &args.extra_ca {
        client_opts.extra_ca =
            sidekey::proxy::client::read_pem_certs(ca).map_err(anyhow::Error::msg)?;
    }
    let client = UpstreamClient::new(&client_opts).map_err(anyhow::Error::msg)?;
    let exporter = match &otlp_endpoint {
        Some(endpoint) => {
            let settings = sidekey::otel::Settings {
                endpoint: endpoint.clone(),
                connection_id: args.otlp_connection_id,
            };
            let exporter = sidekey::otel::init(&settings, client.trusted.clone())
                .map_err(anyhow::Error::msg)?;
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
            let store = sidekey::tls::CertStore::open(cert, key).map_err(anyhow::Error::msg)?;
            store.watch();
            Some(sidekey::tls::server_config(store).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let vault_for_writes = (!args.vault_read_only).then(|| paths.vault.clone());
    if vault_for_writes.is_none() && paths.state.is_none() {
        tracing::warn!("--vault-read-only without --state: refreshed OAuth credentials are kept in memory only");
    }
    // A writable vault is written by the store alone (refreshed tokens go through its writer,
    // below); the credential store keeps only the state file of a read-only vault.
    let store = CredStore::open(None, paths.state.clone())
        .map_err(anyhow::Error::msg)?
        .with_vault_lock(reloader.clone());
    let oauth = TokenManager::new(
        Arc::new(HttpTokenEndpoint::new(
            client.trusted.clone(),
            args.response_timeout,
        )),
        Arc::new(store),
        OAuthOptions {
            refresh_cooldown: args.refresh_cooldown,
        },
    );
    oauth.prune(&snapshot);
    let app = Arc::new(App::new(snapshot, client, options).with_oauth(oauth));
    let backend = sidekey::store::file::FileStore::new(reloader.clone(), args.vault_read_only);
    let writer = sidekey::store::writer::Writer::spawn(app.clone(), Arc::new(backend));
    if vault_for_writes.is_some() {
        app.oauth.use_store(writer.clone());
    }
    let _ = app.writer.set(writer);
    reloader.clone().spawn(app.clone(), watch);
    let nofile = sidekey::server::raise_nofile_limit();
    let (mut limits, admin_limits) = args.listener_limits();
    let fitted = sidekey::server::fit_max_connections(
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
    let health = Arc::new(sidekey::admin::Health::default());
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot bind the admin listener {}", args.admin_listen))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, admin = %admin.local_addr()?, tls = tls.is_some(), "sidekey is serving");
    tokio::spawn(sidekey::admin::serve(
        admin,
        health.clone(),
        app.metrics.clone(),
        admin_limits,
    ));
    health.set_ready(true);
    let shutdown = {
        let health = health.clone();
        async move {
            shutdown_signal().await;
            health.set_ready(false);
            tracing::info!("shutting down: draining in-flight requests");
        }
    };
    sidekey::server::serve(listener, app, tls, limits, shutdown, args.drain_timeout).await;
    // After the drain, so the spans of the last requests are in the final batch.
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
