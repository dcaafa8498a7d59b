//! Configuration: providers.yaml and the vault, parsed and validated into one immutable
//! [`Snapshot`].
//!
//! Loading has two stages, as in pingora's configuration: raw serde types that mirror the files
//! ([`providers`], [`vault`]), then [`snapshot::build`] that validates them together and
//! precompiles everything the request path needs (templates, header names and values, base
//! URLs, lookups). Parsing works on `&str`; file I/O is kept in [`load_files`], so every
//! rejection can be unit-tested with inline YAML. Every problem is a [`Diagnostic`] naming the
//! file and the path inside it.
//! [`reload`] watches the files and swaps a freshly built snapshot in when they change.

pub mod diff;
pub mod journal;
pub mod limits;
pub mod providers;
pub mod reload;
pub mod sealed;
pub mod snapshot;
pub mod table;
pub mod vault;
pub mod yaml_de;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use snapshot::{
    BaseUrl, BuildOptions, CallerKey, Change, Connection, Credential, Injection, Integration,
    Placement, Snapshot, Table,
};

/// Where a source of change (the file reloader; the store's writer when it notices a hand
/// edit) hands a snapshot it built. The process state (`state::State`, above this module)
/// implements it with the one apply path — swap, diff log, token pruning, metrics — so that the
/// configuration does not depend on what is built from it, and every source applies the same
/// way.
pub trait Publish: Send + Sync + 'static {
    /// The serving snapshot: what a reload builds on (and shares unchanged records with).
    fn current(&self) -> std::sync::Arc<Snapshot>;
    /// Makes `new` the serving snapshot and returns what changed. A [`Source::Reload`] is
    /// published on a blocking thread, which may do file I/O (the state file's pruning).
    fn publish(&self, new: std::sync::Arc<Snapshot>, source: Source) -> diff::Changes;
    /// A reload was refused; the serving snapshot stays (counted in the metrics).
    fn refused(&self);
}

/// Who built a published snapshot; decides how its publication is logged.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The file reloader ("configuration reloaded", with the trigger and the time it took from
    /// `started`, the moment the reload began).
    Reload {
        trigger: &'static str,
        started: std::time::Instant,
    },
    /// Anything else ("state updated", with this name).
    Other(&'static str),
}

/// The store's record versions: increasing and never reused within a process, and starting at
/// the current time in microseconds so that they keep increasing across restarts without being
/// stored in the file. One counter per store, shared by its writes (`store::Backend::
/// next_version`) and by the builds of its file (a reload gives a new or changed record the
/// next version and keeps the version of every record that did not change), so a version
/// tells any change of a record — an API write, a refreshed token, a hand edit — from none.
#[derive(Debug)]
pub struct Versions(std::sync::atomic::AtomicU64);

impl Versions {
    pub fn starting_now() -> Self {
        let now = jiff::Timestamp::now().as_microsecond().max(1) as u64;
        Self(std::sync::atomic::AtomicU64::new(now))
    }

    /// A version no record has had yet.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The providers.yaml compiled into the binary, used when none is given or found.
pub const BUNDLED_PROVIDERS: &str = include_str!("../../providers.yaml");

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the operator named it.
    pub file: String,
    /// The path inside the file, e.g. `connections[2].credentials.apiKey`; empty for the root.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    /// The message is passed through [`crate::secret::redact_urls`]: a URL's user info never
    /// reaches a terminal or a log through a diagnostic.
    pub fn error(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            severity: Severity::Error,
            file: file.to_string(),
            path: path.into(),
            message: crate::secret::redact_urls(&message).into_owned(),
        }
    }

    pub fn warning(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, path, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Warning => "warning: ",
            Severity::Error => "",
        };
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}: {kind}{}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {kind}{}", self.file, self.path, self.message)
        }
    }
}

/// The text of both files and the names they are reported under.
#[derive(Debug, Clone)]
pub struct Sources {
    pub providers_name: String,
    pub providers: String,
    pub vault_name: String,
    pub vault: String,
}

/// Where the files are. `providers: None` means the bundled catalogue.
#[derive(Debug, Clone)]
pub struct Paths {
    pub providers: Option<PathBuf>,
    pub vault: PathBuf,
    pub state: Option<PathBuf>,
}

impl Paths {
    /// Resolves the providers path: the given one, else `./providers.yaml` if it exists, else
    /// the bundled copy.
    pub fn new(providers: Option<PathBuf>, vault: PathBuf, state: Option<PathBuf>) -> Self {
        let providers = providers.or_else(|| {
            let local = PathBuf::from("providers.yaml");
            local.is_file().then_some(local)
        });
        Self {
            providers,
            vault,
            state,
        }
    }

    pub fn providers_name(&self) -> String {
        match &self.providers {
            Some(p) => display_name(p),
            None => "providers.yaml (bundled)".to_string(),
        }
    }
}

fn display_name(p: &Path) -> String {
    p.display().to_string()
}

/// When each file read by [`load_files_stamped`] was last modified (`None`: bundled, or unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamps {
    pub providers: Option<SystemTime>,
    pub vault: Option<SystemTime>,
}

/// Reads both files. A missing or unreadable file is a diagnostic, not a panic.
pub fn load_files(paths: &Paths) -> Result<Sources, Vec<Diagnostic>> {
    load_files_stamped(paths).map(|(src, _)| src)
}

/// [`load_files`], also returning the files' modification times. Files are read under
/// [`limits`]: regular files only (a FIFO does not block), at most [`limits::MAX_FILE_BYTES`].
pub fn load_files_stamped(paths: &Paths) -> Result<(Sources, Stamps), Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut stamps = Stamps::default();
    let mut read =
        |name: &str, path: &Path, stamp: &mut Option<SystemTime>| match limits::read_file(path) {
            Ok(f) => {
                *stamp = f.modified;
                f.text
            }
            Err(e) => {
                errors.push(Diagnostic::error(name, "", e.to_string()));
                String::new()
            }
        };
    let providers_name = paths.providers_name();
    let providers = match &paths.providers {
        Some(p) => read(&providers_name, p, &mut stamps.providers),
        None => BUNDLED_PROVIDERS.to_string(),
    };
    let vault_name = display_name(&paths.vault);
    let vault = read(&vault_name, &paths.vault, &mut stamps.vault);
    if errors.is_empty() {
        Ok((
            Sources {
                providers_name,
                providers,
                vault_name,
                vault,
            },
            stamps,
        ))
    } else {
        Err(errors)
    }
}

// The two lower modules that the snapshot's types serve name them only through these traits,
// so that neither `auth` nor `metrics` depends on `config` (which depends on both).
impl crate::auth::Key for CallerKey {
    fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
    fn scopes(&self) -> crate::auth::Scopes {
        self.scopes
    }
}

impl crate::metrics::Labelled for Integration {
    fn label(&self) -> &str {
        &self.unique_key
    }
    fn handle_slot(&self) -> &std::sync::OnceLock<crate::metrics::IntegrationMetrics> {
        &self.metrics
    }
}
