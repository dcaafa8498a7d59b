//! Live reload: watch providers.yaml and the vault, rebuild the snapshot off the request path,
//! and swap it in whole — or keep the last good one and say why. The `--state` file is not
//! watched: only sidekey writes it, and the token manager reads it itself.
//!
//! Files are watched through their parent directories, never the files themselves: an editor's
//! rename-on-save replaces the file's inode, and Kubernetes updates a mounted Secret by renaming
//! a new `..data` symlink over the old one, so neither touches the inode a file watch would
//! hold. Any relevant event in those directories starts a settle period (`--reload-settle`,
//! 200 ms by default) that ends once no event has arrived for that long, or after ten periods
//! of constant events; then the files are re-read, and only when their content differs from
//! the last attempt is a snapshot built. SIGHUP skips both the settle and the comparison and
//! always rebuilds.
//!
//! A file that is being written is not read as if it were finished. A reload whose files were
//! modified less than a settle period ago (at most a second; a steady stream of events forces a
//! reload after ten periods, right in the middle of the writes), or that changed while they were
//! being read and built, is *not ready*: nothing changes, and it is tried again once the files
//! are old enough. A vault or providers.yaml that is empty (or only comments) where the last good
//! one had content — an editor truncates before it writes — is not ready either: sidekey keeps
//! serving, warns, and looks again on the next event. Both cases once let a half-written file
//! through as a valid, smaller configuration, and every connection it lacked answered 404.
//!
//! This module is the file *source*: it decides when to read, reads, validates and builds. The
//! snapshot it built is handed to [`Publish`] — the process state's one apply path, which
//! swaps it in, logs what changed ("configuration reloaded"), prunes token state and counts
//! the reload in the metrics, exactly as for an API write. The build runs on a blocking
//! thread; requests keep the snapshot they loaded (`load_full`), so a swap never fails a
//! request in flight.

use std::ffi::OsString;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::diff::Changes;
use super::snapshot::{BuildOptions, Snapshot};
use super::{limits, load_files_stamped, Diagnostic, Paths, Publish, Source, Sources, Stamps};
use crate::atomic_file::FileStamp;

/// The stamps of both files (`providers: None` for the bundled catalogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamps {
    pub providers: Option<FileStamp>,
    pub vault: FileStamp,
}

/// What the files held when sidekey last read them, or last wrote the vault.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// [`Reloader::content_hash`] of what was read; `None` after sidekey wrote the vault
    /// itself (the writer does not hash its text) or when the next event must read again.
    pub hash: Option<u64>,
    /// The files' stamps then: while they still match, the files are unchanged.
    pub stamps: Option<FileStamps>,
}

impl Seen {
    fn read(hash: u64, stamps: Option<FileStamps>) -> Self {
        Self {
            hash: Some(hash),
            stamps,
        }
    }
}

/// How long the watched directories must stay quiet before a reload, unless a flag says otherwise.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(200);

/// The longest settle period accepted; keeps deadline arithmetic far from overflow.
pub const MAX_SETTLE: Duration = Duration::from_secs(24 * 3600);

/// A steady stream of events cannot postpone a reload longer than this many settle periods.
const MAX_SETTLE_PERIODS: u32 = 10;

/// The directory watches and the SIGHUP handler, installed and waiting for the reload loop.
pub struct Watch {
    /// Dropping the watcher ends the watches (and closes `events`).
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<()>,
    hangup: Hangup,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("watching", &self._watcher.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a reload was attempted; logged with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An event in a watched directory (after settling).
    FileChange,
    /// SIGHUP: rebuild even when the files look unchanged.
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::FileChange => "file change",
            Self::Signal => "SIGHUP",
        }
    }
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files read the same as at the last attempt; nothing was built.
    Unchanged,
    /// A new snapshot is serving.
    Reloaded { generation: u64, changes: Changes },
    /// The files were refused; the previous snapshot keeps serving.
    Failed { errors: Vec<Diagnostic> },
    /// The files look mid-write (empty where they had content, or modified just now); nothing
    /// changed. `retry_in`: when to look again without waiting for another event.
    NotReady {
        reason: String,
        retry_in: Option<Duration>,
    },
}

/// The longest a file must have been left alone before it is read (shorter when the settle
/// period is).
const MAX_QUIET: Duration = Duration::from_secs(1);

/// Owns where the files are and how to build them. What happened is counted by the metrics,
/// through [`Publish`].
#[derive(Debug)]
pub struct Reloader {
    paths: Paths,
    /// Caller keys from `SIDEKEY_SECRET_KEY`: read once at startup and kept across reloads.
    env_keys: Vec<[u8; 32]>,
    /// `SIDEKEY_ENCRYPTION_KEY`, read once at startup: opens sealed values on every reload.
    encryption_key: Option<Arc<crate::config::sealed::EncryptionKey>>,
    settle: Duration,
    /// The file store's record versions (see [`crate::config::Versions`]): every build of the
    /// files gives new and changed records the next one.
    versions: Arc<crate::config::Versions>,
    /// The generation of the snapshot serving now, as far as the file source knows (the file
    /// store raises it for its commits): the next build counts on from it.
    generation: AtomicU64,
    /// What the last attempt (good or bad) read, or what the file store last wrote, so that the
    /// same broken file is not reported again on every unrelated event and sidekey's own writes
    /// are not read back. Held for a whole reload or commit, so those never overlap.
    last_seen: Mutex<Seen>,
    /// Whether the last good providers.yaml and vault had content: an empty file where the last
    /// good one had content is an editor mid-save, not a request to remove everything.
    had_content: Mutex<(bool, bool)>,
}

impl Reloader {
    /// `settle` is capped at [`MAX_SETTLE`].
    pub fn new(paths: Paths, env_keys: Vec<[u8; 32]>, settle: Duration) -> Self {
        Self {
            paths,
            env_keys,
            encryption_key: None,
            settle: settle.min(MAX_SETTLE),
            versions: Arc::new(crate::config::Versions::starting_now()),
            generation: AtomicU64::new(0),
            last_seen: Mutex::new(Seen::default()),
            had_content: Mutex::new((false, false)),
        }
    }

    /// Opens sealed vault values with this key on the first load and every reload.
    /// The key the vault's secrets are sealed with, if one is set.
    pub(crate) fn encryption_key(&self) -> Option<&Arc<crate::config::sealed::EncryptionKey>> {
        self.encryption_key.as_ref()
    }

    pub fn with_encryption_key(
        mut self,
        key: Option<Arc<crate::config::sealed::EncryptionKey>>,
    ) -> Self {
        self.encryption_key = key;
        self
    }

    /// The generation of the snapshot serving now (1 after the first load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Records the generation a writer published, so the next reload counts on from it.
    pub(crate) fn set_generation(&self, generation: u64) {
        self.generation.fetch_max(generation, Ordering::Relaxed);
    }

    /// The record versions the file's builds and the file store's writes share.
    pub(crate) fn versions(&self) -> &crate::config::Versions {
        &self.versions
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub(crate) fn options(&self, generation: u64) -> BuildOptions {
        BuildOptions {
            env_keys: self.env_keys.clone(),
            generation,
            encryption_key: self.encryption_key.clone(),
            versions: Some(self.versions.clone()),
        }
    }

    /// Builds the first snapshot (generation 1) and remembers what it read.
    pub fn load_initial(&self) -> Result<Snapshot, Vec<Diagnostic>> {
        let mut last = self.lock_last_seen();
        let stamps = self.stamp_files();
        let (src, _) = load_files_stamped(&self.paths)?;
        *last = Seen::read(self.content_hash(&src), stamps);
        // The vault and the API writes its journal holds that were not folded into it yet.
        let snap = super::journal::build(&src, &self.paths.vault, &self.options(1), None)?;
        self.remember_content(&src);
        self.generation.store(1, Ordering::Relaxed);
        Ok(snap)
    }

    fn remember_content(&self, src: &Sources) {
        let mut had = self.had_content.lock().unwrap_or_else(|p| p.into_inner());
        *had = (
            !limits::is_blank(&src.providers),
            !limits::is_blank(&src.vault),
        );
    }

    /// Why these files should not be built yet, if they look mid-write.
    fn not_ready(&self, src: &Sources, stamps: &Stamps) -> Option<Outcome> {
        let had = *self.had_content.lock().unwrap_or_else(|p| p.into_inner());
        let emptied = [
            (
                had.0 && self.paths.providers.is_some(),
                &src.providers,
                &src.providers_name,
            ),
            (had.1, &src.vault, &src.vault_name),
        ];
        for (had_content, text, name) in emptied {
            if had_content && limits::is_blank(text) {
                return Some(Outcome::NotReady {
                    reason: format!(
                        "{name} is empty but the configuration serving has content: an editor mid-save? keeping the previous configuration until the file has content"
                    ),
                    retry_in: None,
                });
            }
        }
        let quiet = self.settle.min(MAX_QUIET);
        let now = std::time::SystemTime::now();
        let youngest = [stamps.providers, stamps.vault]
            .into_iter()
            .flatten()
            // A modification time in the future (clock skew) says nothing: ignore it.
            .filter_map(|m| now.duration_since(m).ok())
            .min()?;
        (youngest < quiet).then(|| Outcome::NotReady {
            reason: format!(
                "a configuration file was modified {} ms ago; waiting until it has been left alone for {} ms",
                youngest.as_millis(),
                quiet.as_millis()
            ),
            retry_in: Some(quiet - youngest),
        })
    }

    /// Whether a file changed since it was read (compared by modification time).
    fn changed_since(&self, stamps: &Stamps) -> bool {
        let now = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let providers = self.paths.providers.as_deref().and_then(now);
        providers != stamps.providers || now(&self.paths.vault) != stamps.vault
    }

    pub(crate) fn lock_last_seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic while holding the lock leaves only a stale hash behind: keep going.
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stamps of the files a reload reads, taken before reading them (so a change while
    /// they are read leaves a stamp that no longer matches, never the other way round).
    pub(crate) fn stamp_files(&self) -> Option<FileStamps> {
        let providers = match &self.paths.providers {
            Some(p) => Some(FileStamp::read(p)?),
            None => None,
        };
        Some(FileStamps {
            providers,
            vault: FileStamp::read(&self.paths.vault)?,
        })
    }

    /// A fingerprint of everything a reload reads, to skip rebuilding identical files. Not a
    /// security measure: whoever can write these files controls sidekey anyway.
    pub(crate) fn content_hash(&self, src: &Sources) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        src.providers.hash(&mut h);
        src.vault.hash(&mut h);
        h.finish()
    }

    /// Re-reads the files and, if they changed (or on SIGHUP), builds a new snapshot and
    /// publishes it into `target`. Blocking: parsing a large vault takes a while, so call it
    /// off the runtime's worker threads (see [`Reloader::reload`]).
    pub fn reload_blocking(&self, target: &dyn Publish, trigger: Trigger) -> Outcome {
        let started = Instant::now();
        let mut last = self.lock_last_seen();
        let file_stamps = self.stamp_files();
        if trigger == Trigger::FileChange && file_stamps.is_some() && last.stamps == file_stamps {
            // The files are the ones last read or written by sidekey itself (the file store's
            // commits land here through the watch): nothing to read.
            tracing::debug!("configuration files unchanged (same files)");
            return Outcome::Unchanged;
        }
        let (src, stamps) = match load_files_stamped(&self.paths) {
            Ok(src) => src,
            Err(errors) => {
                *last = Seen::default(); // retry on the next event whatever it is
                return self.refused(target, trigger, errors);
            }
        };
        let hash = self.content_hash(&src);
        if trigger == Trigger::FileChange && last.hash == Some(hash) {
            tracing::debug!("configuration files unchanged");
            last.stamps = file_stamps;
            return Outcome::Unchanged;
        }
        if let Some(outcome) = self.not_ready(&src, &stamps) {
            *last = Seen::default(); // look again next time, whatever the files hold then
            return self.postponed(trigger, outcome);
        }
        *last = Seen::read(hash, file_stamps);
        let generation = self.generation() + 1;
        let current = target.current();
        let built = super::journal::build(
            &src,
            &self.paths.vault,
            &self.options(generation),
            Some(&current),
        );
        let new = match built {
            Ok(s) => Arc::new(s),
            Err(errors) => return self.refused(target, trigger, errors),
        };
        drop(current);
        if self.changed_since(&stamps) {
            *last = Seen::default();
            let outcome = Outcome::NotReady {
                reason: "a configuration file changed while it was being read".into(),
                retry_in: Some(self.settle.min(MAX_QUIET)),
            };
            return self.postponed(trigger, outcome);
        }
        self.remember_content(&src);
        drop(src);
        for w in new.warnings.iter() {
            // A plaintext secret in a sealed vault is worth an operator's attention.
            if crate::config::sealed::is_sealing_warning(w) {
                tracing::warn!(warning = %w, "configuration warning");
            } else {
                tracing::debug!(warning = %w, "configuration warning");
            }
        }
        self.generation.store(generation, Ordering::Relaxed);
        // The one apply path logs "configuration reloaded", prunes token state and counts it.
        let changes = target.publish(
            new,
            Source::Reload {
                trigger: trigger.as_str(),
                started,
            },
        );
        // The old snapshot's unique parts and the build's transient state were just freed
        // (unless a request still holds the old one): give their pages back now.
        crate::memory::release_freed();
        Outcome::Reloaded {
            generation,
            changes,
        }
    }

    fn postponed(&self, trigger: Trigger, outcome: Outcome) -> Outcome {
        if let Outcome::NotReady { reason, .. } = &outcome {
            tracing::warn!(
                serving_generation = self.generation(),
                trigger = trigger.as_str(),
                reason = %reason,
                "configuration reload postponed; the previous configuration keeps serving"
            );
        }
        outcome
    }

    fn refused(&self, target: &dyn Publish, trigger: Trigger, errors: Vec<Diagnostic>) -> Outcome {
        target.refused();
        let serving = self.generation();
        for d in &errors {
            // Diagnostics name file and path and never quote values, so they are safe to log.
            tracing::error!(
                file = %d.file,
                path = %d.path,
                reason = %d.message,
                "configuration problem: {d}"
            );
        }
        tracing::error!(
            serving_generation = serving,
            trigger = trigger.as_str(),
            errors = errors.len(),
            "configuration reload refused; the previous configuration keeps serving"
        );
        Outcome::Failed { errors }
    }

    /// [`Reloader::reload_blocking`] on a blocking thread.
    pub async fn reload(self: &Arc<Self>, target: &Arc<dyn Publish>, trigger: Trigger) -> Outcome {
        let (this, worker) = (self.clone(), target.clone());
        match tokio::task::spawn_blocking(move || this.reload_blocking(&*worker, trigger)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                target.refused();
                tracing::error!(error = %e, "configuration reload crashed; the previous configuration keeps serving");
                Outcome::Failed { errors: Vec::new() }
            }
        }
    }

    /// The directories to watch and the file names that matter in them.
    pub fn watch_set(&self) -> (Vec<PathBuf>, Vec<OsString>) {
        let files = [
            self.paths.providers.as_deref(),
            Some(self.paths.vault.as_path()),
        ];
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut names: Vec<OsString> = Vec::new();
        for f in files.into_iter().flatten() {
            let dir = match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            if let Some(n) = f.file_name() {
                names.push(n.to_os_string());
            }
        }
        (dirs, names)
    }

    /// Installs the directory watches and the SIGHUP handler. Call it before
    /// [`Reloader::load_initial`], so that no change slips in between the first load and the
    /// watch, and a SIGHUP sent once sidekey serves is never lost (nor fatal, its default).
    pub fn watch(&self) -> Watch {
        let (tx, events) = mpsc::channel(1);
        Watch {
            _watcher: self.start_watcher(tx),
            events,
            hangup: hangup_signal(),
        }
    }

    /// Spawns the reload loop, which publishes new snapshots into `app`.
    pub fn spawn(
        self: Arc<Self>,
        app: Arc<dyn Publish>,
        watch: Watch,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(app, watch))
    }

    fn start_watcher(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let (dirs, names) = self.watch_set();
        let handler = move |res: notify::Result<Event>| {
            let relevant = match &res {
                Ok(ev) => relevant(ev, &names),
                Err(_) => true, // e.g. a queue overflow: look at the files to be sure
            };
            if relevant {
                // A full channel already holds a wake-up; one is enough.
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
                return None;
            }
        };
        for dir in &dirs {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching for configuration changes")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory; changes in it need SIGHUP")
                }
            }
        }
        Some(watcher)
    }

    async fn run(self: Arc<Self>, app: Arc<dyn Publish>, mut watch: Watch) {
        use tokio::time::Instant;
        // While settling: (quiet until, give up waiting for quiet at).
        let mut pending: Option<(Instant, Instant)> = None;
        // A postponed reload is retried with the trigger it had (a SIGHUP stays forced).
        let mut retry = Trigger::FileChange;
        let postpone = |outcome: &Outcome, pending: &mut Option<(Instant, Instant)>| {
            if let Outcome::NotReady {
                retry_in: Some(d), ..
            } = outcome
            {
                let at = Instant::now() + *d;
                *pending = Some((at, at));
                return true;
            }
            false
        };
        loop {
            let due = async {
                match pending {
                    Some((quiet, limit)) => tokio::time::sleep_until(quiet.min(limit)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = watch.events.recv() => {
                    let now = Instant::now();
                    let limit = pending.map_or(now + self.settle * MAX_SETTLE_PERIODS, |p| p.1);
                    pending = Some((now + self.settle, limit));
                }
                () = due => {
                    pending = None;
                    let trigger = std::mem::replace(&mut retry, Trigger::FileChange);
                    let outcome = self.reload(&app, trigger).await;
                    if postpone(&outcome, &mut pending) {
                        retry = trigger;
                    }
                }
                Some(()) = next_hangup(&mut watch.hangup) => {
                    // A forced reload reads everything, pending changes included.
                    pending = None;
                    let outcome = self.reload(&app, Trigger::Signal).await;
                    if postpone(&outcome, &mut pending) {
                        retry = Trigger::Signal;
                    }
                }
                else => break,
            }
        }
    }
}

/// Whether an event can concern the watched files: it names one of them, or a Kubernetes
/// atomic-writer entry (`..data`, `..2026_…`), or no path at all (a rescan). Reads — our own
/// included — are ignored, except a close after writing.
pub fn relevant(ev: &Event, names: &[OsString]) -> bool {
    if let EventKind::Access(kind) = ev.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|w| w == n) || n.as_encoded_bytes().starts_with(b"..")
            })
        })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<std::convert::Infallible>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

async fn next_hangup(s: &mut Hangup) -> Option<()> {
    match s {
        #[cfg(unix)]
        Some(s) => s.recv().await,
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same before/after vaults as the diff tests, so both agree on what changed.
    use crate::config::diff::tests::{AFTER, BEFORE, PROVIDERS};
    use arc_swap::ArcSwap;

    /// A bare [`Publish`]: swaps and counts, as the state's apply path does without the rest.
    struct Slot {
        snapshot: ArcSwap<Snapshot>,
        published: AtomicU64,
        refused: AtomicU64,
    }

    impl Slot {
        fn new(s: Snapshot) -> Self {
            Self {
                snapshot: ArcSwap::from_pointee(s),
                published: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }
        }
        fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
            self.snapshot.load()
        }
        fn load_full(&self) -> Arc<Snapshot> {
            self.snapshot.load_full()
        }
    }

    impl Publish for Slot {
        fn current(&self) -> Arc<Snapshot> {
            self.snapshot.load_full()
        }
        fn publish(&self, new: Arc<Snapshot>, _: Source) -> Changes {
            self.published.fetch_add(1, Ordering::Relaxed);
            let old = self.snapshot.swap(new.clone());
            crate::config::diff::diff(&old, &new)
        }
        fn refused(&self) {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn relevant_events() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let names = vec![
            OsString::from("vault.yaml"),
            OsString::from("providers.yaml"),
        ];
        let yes = [
            event(EventKind::Modify(ModifyKind::Any), "/d/vault.yaml"),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "./vault.yaml",
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/d/providers.yaml",
            ),
            event(EventKind::Create(CreateKind::Any), "/d/..data"),
            event(EventKind::Create(CreateKind::Any), "/d/..2026_11_22_a"),
            Event::new(EventKind::Other),
        ];
        for e in &yes {
            assert!(relevant(e, &names), "{e:?}");
        }
        let no = [
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/d/vault.yaml",
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/d/vault.yaml",
            ),
            event(EventKind::Modify(ModifyKind::Any), "/d/app.log"),
            event(EventKind::Create(CreateKind::Any), "/d/.vault.yaml.swp"),
        ];
        for e in &no {
            assert!(!relevant(e, &names), "{e:?}");
        }
    }

    #[test]
    fn watch_set_uses_parent_directories() {
        let r = Reloader::new(
            Paths {
                providers: None,
                vault: PathBuf::from("vault.yaml"),
                state: Some(PathBuf::from("/var/lib/sidekey/state.json")),
            },
            Vec::new(),
            DEFAULT_SETTLE,
        );
        let (dirs, names) = r.watch_set();
        assert_eq!(
            dirs,
            [PathBuf::from(".")],
            "the state file is sidekey's own"
        );
        assert_eq!(names, [OsString::from("vault.yaml")]);
    }

    #[test]
    fn the_vault_sidekey_wrote_is_not_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = dir.path().join("providers.yaml");
        let vault = dir.path().join("vault.yaml");
        std::fs::write(&providers, PROVIDERS).expect("write");
        std::fs::write(&vault, BEFORE).expect("write");
        let r = Reloader::new(
            Paths {
                providers: Some(providers),
                vault: vault.clone(),
                state: None,
            },
            Vec::new(),
            Duration::ZERO,
        );
        let slot = Slot::new(r.load_initial().expect("loads"));
        // What the file store does on a commit: write a new vault, record its stamp, no hash.
        {
            let mut seen = r.lock_last_seen();
            let stamp = crate::atomic_file::write_with(&vault, 0o600, |w| {
                use std::io::Write as _;
                w.write_all(AFTER.as_bytes())
            })
            .expect("write");
            let providers = seen.stamps.expect("stamped").providers;
            *seen = Seen {
                hash: None,
                stamps: Some(FileStamps {
                    providers,
                    vault: stamp,
                }),
            };
        }
        assert_eq!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Unchanged,
            "the watch event of sidekey's own write reads nothing"
        );
        assert_eq!(slot.load().generation, 1);
        // An editor's rename-on-save is a new file: read and built.
        let tmp = dir.path().join("vault.yaml.new");
        std::fs::write(&tmp, AFTER.replace("apiKey: rotated", "apiKey: edited")).expect("write");
        std::fs::rename(&tmp, &vault).expect("rename");
        assert!(matches!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Reloaded { generation: 2, .. }
        ));
        // Touched only: read, found identical by its hash, and not built again.
        let f = std::fs::File::options()
            .write(true)
            .open(&vault)
            .expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("touch");
        assert_eq!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Unchanged
        );
    }

    #[test]
    fn a_reload_keeps_the_version_of_every_record_it_did_not_see_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = dir.path().join("providers.yaml");
        let vault = dir.path().join("vault.yaml");
        let oauth = "o: {auth_mode: OAUTH2, token_url: \"https://t.example/t\", proxy: {base_url: \"https://o.example\"}}\n";
        std::fs::write(&providers, format!("{PROVIDERS}{oauth}")).expect("write");
        let text = |b_provider: &str, key: &str, extra: &str| {
            format!(
                "integrations: [{{unique_key: a, provider: hdr}}, {{unique_key: b, provider: {b_provider}}}, {{unique_key: o, provider: o, credentials: {{oauth_client_id: i, oauth_client_secret: s}}}}]
connections:
  - {{connection_id: same, provider_config_key: a, credentials: {{type: API_KEY, apiKey: k}}}}
  - {{connection_id: key, provider_config_key: a, credentials: {{type: API_KEY, apiKey: {key}}}}}
  - {{connection_id: moved, provider_config_key: b, credentials: {{type: API_KEY, apiKey: k}}}}
  - {{connection_id: tok, provider_config_key: o, credentials: {{type: OAUTH2, access_token: t, refresh_token: r, expires_at: \"2030-01-01T00:00:00.000+00:00\"}}}}
{extra}"
            )
        };
        std::fs::write(&vault, text("hdr", "k", "")).expect("write");
        let r = Reloader::new(
            Paths {
                providers: Some(providers),
                vault: vault.clone(),
                state: None,
            },
            Vec::new(),
            Duration::ZERO,
        );
        let slot = Slot::new(r.load_initial().expect("loads"));
        let before = slot.load_full();
        let v = |s: &Snapshot, i: &str, c: &str| s.connection(i, c).expect("connection").version;
        let first: Vec<u64> = [("a", "same"), ("a", "key"), ("b", "moved"), ("o", "tok")]
            .iter()
            .map(|(i, c)| v(&before, i, c))
            .collect();
        assert!(
            first.iter().all(|v| *v > 0),
            "the first load versions every record: {first:?}"
        );
        let mut distinct = first.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), first.len(), "{first:?}");

        // A rotated key, a changed integration around an unchanged record, a new record.
        let added = "  - {connection_id: added, provider_config_key: a, credentials: {type: API_KEY, apiKey: k}}\n";
        std::fs::write(&vault, text("other", "rotated", added)).expect("write");
        assert!(matches!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Reloaded { .. }
        ));
        let after = slot.load_full();
        assert_eq!(v(&after, "a", "same"), first[0], "unchanged");
        assert!(Arc::ptr_eq(
            before.connection("a", "same").expect("old"),
            after.connection("a", "same").expect("new")
        ));
        let newest = *first.iter().max().expect("versions");
        assert!(
            v(&after, "a", "key") > newest,
            "a changed record gets a new version"
        );
        assert_eq!(
            v(&after, "b", "moved"),
            first[2],
            "the record did not change, its integration did"
        );
        assert_eq!(
            v(&after, "o", "tok"),
            first[3],
            "an expires_at written another way than sidekey prints it is no change"
        );
        assert!(
            v(&after, "a", "added") > newest,
            "a new record gets a new version"
        );
    }

    #[test]
    fn reload_swaps_only_good_changed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = dir.path().join("providers.yaml");
        let vault = dir.path().join("vault.yaml");
        std::fs::write(&providers, PROVIDERS).expect("write");
        std::fs::write(&vault, BEFORE).expect("write");
        let r = Reloader::new(
            Paths {
                providers: Some(providers),
                vault: vault.clone(),
                state: None,
            },
            vec![[7; 32]],
            Duration::ZERO, // files written just now are read at once
        );
        let slot = Slot::new(r.load_initial().expect("loads"));
        assert_eq!((r.generation(), slot.load().generation), (1, 1));

        assert_eq!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Unchanged
        );

        std::fs::write(&vault, AFTER).expect("write");
        let Outcome::Reloaded {
            generation,
            changes,
        } = r.reload_blocking(&slot, Trigger::FileChange)
        else {
            panic!("expected a reload");
        };
        assert_eq!(generation, 2);
        assert_eq!(changes.connections.changed, 2);
        let s = slot.load_full();
        assert_eq!(s.generation, 2);
        assert!(
            s.secret_keys.iter().any(|k| k.digest == [7; 32]),
            "environment keys survive a reload"
        );
        assert!(s.connection("a", "added").is_some());

        std::fs::write(&vault, AFTER.replace("apiKey: rotated", "apiKey: \"\"")).expect("write");
        let Outcome::Failed { errors } = r.reload_blocking(&slot, Trigger::FileChange) else {
            panic!("expected a refusal");
        };
        assert_eq!(
            errors[0].path, "connections[1].credentials.apiKey",
            "{errors:?}"
        );
        assert_eq!(
            slot.load().generation,
            2,
            "the last good snapshot keeps serving"
        );
        assert_eq!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Unchanged,
            "the same broken file is not reported twice"
        );
        assert!(matches!(
            r.reload_blocking(&slot, Trigger::Signal),
            Outcome::Failed { .. }
        ));

        std::fs::write(&vault, AFTER).expect("write");
        assert!(matches!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Reloaded { generation: 3, .. }
        ));
        let forced = r.reload_blocking(&slot, Trigger::Signal);
        assert_eq!(
            forced,
            Outcome::Reloaded {
                generation: 4,
                changes: Changes::default()
            },
            "SIGHUP rebuilds even unchanged files"
        );
        assert_eq!(
            (
                slot.published.load(Ordering::Relaxed),
                slot.refused.load(Ordering::Relaxed)
            ),
            (3, 2)
        );

        std::fs::remove_file(&vault).expect("remove");
        assert!(matches!(
            r.reload_blocking(&slot, Trigger::FileChange),
            Outcome::Failed { .. }
        ));
        assert_eq!(slot.load().generation, 4);
    }
}
