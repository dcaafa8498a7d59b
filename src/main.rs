//! The `sidekey` binary: parse the command line, set up logging and the runtime, bind the
//! listeners and hand them to [`sidekey::run`] with SIGTERM/SIGINT as the shutdown. The
//! offline commands (`check`, `key new`, `vault …`) are here too. Everything else is in the
//! library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use sidekey::cli::{
    Cli, Command, FileArgs, KeyCommand, ServeArgs, StoreArgs, StoreCommand, VaultCommand,
    VaultFileArgs,
};
use sidekey::config::sealed::{self, EncryptionKey};
use sidekey::config::{self, BuildOptions, Paths, Severity};

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
        Some(Command::Migrate(args)) => migrate(&args),
        Some(Command::Store(cmd)) => store_command(cmd),
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
        versions: None,
    };
    // The vault with the API writes its journal holds (not yet folded into it).
    let result = config::load_files(&paths)
        .and_then(|src| config::journal::build(&src, &paths.vault, &opts, None));
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
            .map_err(VaultCommandError::NewKey),
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

/// Why `sidekey vault encrypt | rekey` changed nothing; printed after `sidekey: `. Never holds
/// a secret: diagnostics and sealing errors name fields, not values.
#[derive(Debug, thiserror::Error)]
enum VaultCommandError {
    #[error("{var} is not set: it must hold {what} (make a key with `sidekey vault new-key`)")]
    NoKey {
        var: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Key(#[from] sealed::KeyError),
    #[error("{0}")]
    NewKey(sealed::SealError),
    #[error("{}", lines(.0))]
    Files(Vec<config::Diagnostic>),
    #[error("{}\nthe vault was not changed: fix it first (see `sidekey check`)", lines(.0))]
    Invalid(Vec<config::Diagnostic>),
    #[error("{0}")]
    Parse(config::Diagnostic),
    #[error("{file}: {source}")]
    Reseal {
        file: String,
        source: sealed::ResealError,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{0}: the file changed while it was being sealed; nothing was written, run the command again")]
    Changed(String),
    #[error("{0}: holds API writes not yet folded into the vault; nothing was written. Start sidekey on this vault (it folds the journal a second after writes stop), stop it, and run the command again")]
    Unfolded(String),
    #[error("{file}: cannot write: {source}")]
    Write {
        file: String,
        source: std::io::Error,
    },
}

/// The key in `var`, which this command cannot do without.
fn required_key(
    var: &'static str,
    what: &'static str,
) -> Result<Arc<EncryptionKey>, VaultCommandError> {
    match EncryptionKey::from_env_var(var)? {
        Some(k) => Ok(Arc::new(k)),
        None => Err(VaultCommandError::NoKey { var, what }),
    }
}

fn vault_encrypt(files: &VaultFileArgs) -> Result<(), VaultCommandError> {
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

fn vault_rekey(files: &VaultFileArgs) -> Result<(), VaultCommandError> {
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
) -> Result<(String, Option<sealed::ResealSummary>), VaultCommandError> {
    let paths = Paths::new(files.providers.clone(), files.vault.clone(), None);
    let src = config::load_files(&paths).map_err(VaultCommandError::Files)?;
    // Resealing the vault's text alone would leave the journal's groups sealed with the old
    // key (or in plaintext), replayed over the new file at the next start.
    let journal =
        config::journal::read(&paths.vault).map_err(|d| VaultCommandError::Files(vec![d]))?;
    if !journal.ops.is_empty() {
        return Err(VaultCommandError::Unfolded(
            config::journal::path(&paths.vault).display().to_string(),
        ));
    }
    // The same checks as `sidekey check`, so a vault is never rewritten while it is broken.
    let opts = BuildOptions {
        env_keys: env_keys(),
        generation: 0,
        encryption_key: Some(old.clone()),
        versions: None,
    };
    config::snapshot::build(&src, &opts).map_err(VaultCommandError::Invalid)?;
    let (text, summary) = sealed::reseal_text(&src.vault_name, &src.vault, Some(old.as_ref()), new)
        .map_err(|e| match e {
            sealed::ResealError::Parse(d) => VaultCommandError::Parse(d),
            source => VaultCommandError::Reseal {
                file: src.vault_name.clone(),
                source,
            },
        })?;
    if !worth_writing(&summary) {
        return Ok((src.vault_name, None));
    }
    // Through a symlink to its target, as the credential writer does.
    let io = |source| VaultCommandError::Io {
        file: src.vault_name.clone(),
        source,
    };
    let target = std::fs::canonicalize(&files.vault).map_err(io)?;
    // A sidekey that refreshed a token meanwhile must not lose its write to ours.
    let now = std::fs::read_to_string(&target).map_err(io)?;
    if now != src.vault {
        return Err(VaultCommandError::Changed(src.vault_name));
    }
    sidekey::atomic_file::write(&target, text.as_bytes(), 0o600).map_err(|source| {
        VaultCommandError::Write {
            file: src.vault_name.clone(),
            source,
        }
    })?;
    Ok((src.vault_name, Some(summary)))
}

fn lines(diags: &[config::Diagnostic]) -> String {
    let v: Vec<String> = diags.iter().map(ToString::to_string).collect();
    v.join("\n")
}

/// Runs an offline store command on a small runtime; prints its error after `sidekey: `.
fn offline<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    sidekey::telemetry::init(sidekey::telemetry::LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidekey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidekey: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store (which applies the migrations, under the advisory lock).
async fn open_store(
    args: &StoreArgs,
    key: Option<Arc<EncryptionKey>>,
) -> anyhow::Result<Arc<sidekey::store::postgres::PgStore>> {
    let extra_ca = match &args.extra_ca {
        Some(p) => sidekey::upstream::read_pem_certs(p)?,
        None => Vec::new(),
    };
    let tls = sidekey::upstream::tls_config(&extra_ca)?;
    Ok(sidekey::store::postgres::PgStore::open(&args.store, tls, key, 1).await?)
}

/// `sidekey migrate`: brings the PostgreSQL store's schema up to date.
fn migrate(args: &StoreArgs) -> ExitCode {
    offline(async {
        open_store(args, None).await?;
        println!(
            "the store's schema is at version {}",
            sidekey::store::postgres::schema::latest()
        );
        Ok(())
    })
}

/// `sidekey store import | export`.
fn store_command(cmd: StoreCommand) -> ExitCode {
    offline(async move {
        let key = encryption_key()?;
        match cmd {
            StoreCommand::Import {
                from,
                providers,
                store,
            } => {
                let paths = Paths::new(providers, from, None);
                let src = config::load_files(&paths).map_err(|d| anyhow::anyhow!(lines(&d)))?;
                let opts = BuildOptions {
                    env_keys: Vec::new(),
                    generation: 0,
                    encryption_key: key.clone(),
                    versions: None,
                };
                let vault =
                    config::journal::build(&src, &paths.vault, &opts, None).map_err(|d| {
                        anyhow::anyhow!(
                            "{}\nnothing was imported: fix it first (see `sidekey check`)",
                            lines(&d)
                        )
                    })?;
                if key.is_none() {
                    eprintln!("sidekey: SIDEKEY_ENCRYPTION_KEY is not set: the secrets go into the store unsealed");
                }
                let store = open_store(&store, key).await?;
                let done = sidekey::store::postgres::transfer::import(&store, &vault).await?;
                println!(
                    "imported {} caller key(s), {} integration(s), {} connection(s) from {}",
                    done.caller_keys, done.integrations, done.connections, src.vault_name
                );
            }
            StoreCommand::Export {
                to,
                providers,
                store,
            } => {
                let paths = Paths::new(providers, to.clone(), None);
                let name = paths.providers_name();
                let text = match &paths.providers {
                    Some(p) => {
                        config::limits::read_file(p)
                            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
                            .text
                    }
                    None => config::BUNDLED_PROVIDERS.to_string(),
                };
                let catalog = config::providers::Catalog::parse(&name, &text)
                    .map_err(|d| anyhow::anyhow!("{d}"))?;
                let sealed = key.is_some();
                let store = open_store(&store, key).await?;
                let (bytes, snap) =
                    sidekey::store::postgres::transfer::export(&store, Arc::new(catalog)).await?;
                sidekey::atomic_file::write(&to, &bytes, 0o600)
                    .with_context(|| format!("cannot write {}", to.display()))?;
                println!(
                    "exported {} integration(s), {} connection(s) to {}{}",
                    snap.integrations.len(),
                    snap.connection_count(),
                    to.display(),
                    if sealed { " (secrets sealed)" } else { "" }
                );
            }
        }
        Ok(())
    })
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

/// Binds both listeners (so a port in use fails before anything else happens), then serves
/// until SIGTERM or SIGINT.
async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = sidekey::Settings {
        env_keys: env_keys(),
        // Read before anything is written, so a malformed key leaves no new vault behind.
        encryption_key: encryption_key()?,
        webhook_signing_key: std::env::var("SIDEKEY_WEBHOOK_SIGNING_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|k| Arc::new(sidekey::secret::Secret::new(k))),
        serve: args,
    };
    let admin = tokio::net::TcpListener::bind(settings.serve.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot bind the admin listener {}",
                settings.serve.admin_listen
            )
        })?;
    let proxy = tokio::net::TcpListener::bind(settings.serve.listen)
        .await
        .with_context(|| format!("cannot bind {}", settings.serve.listen))?;
    let connect = match settings.serve.connect_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the connect listener {addr}"))?,
        ),
        None => None,
    };
    let listeners = sidekey::Listeners {
        proxy,
        admin,
        connect,
    };
    sidekey::run(settings, listeners, shutdown_signal()).await?;
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
