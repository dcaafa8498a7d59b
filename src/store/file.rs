//! The vault file as a store: the records live in `vault.yaml` and, for the connections API
//! writes put or deleted since it was last rewritten, in its journal beside it
//! ([`crate::config::journal`]: `vault.yaml.journal`, one JSON line per group commit).
//!
//! A group that only puts or deletes connections (API writes, refreshed tokens) is appended to
//! the journal and `fdatasync`ed: a few kilobytes, where rewriting the vault was the whole file
//! copied and fsynced (1.86 MB at 10k connections, 60–100 times a second under 500 writes/s,
//! which cost the proxy's p99 on the same core; issue 12, BENCHMARKS.md). The vault is
//! rewritten — *folded*: the journal's changes written into it, then the journal emptied —
//! on the first commit of a process, on a commit that changes integrations or caller keys,
//! when the journal would pass a quarter of the vault's size ([`FOLD_FRACTION`]), and a
//! second after writes stop ([`crate::store::Backend::idle`]). A fold replaces the vault
//! (temporary file, fsync, rename, fsync of the directory, mode 0600) as every commit did
//! before: the first, and the first after a hand edit, streams the whole snapshot record by
//! record through [`super::render`] with the old file's leading comments kept; later ones are
//! spliced by [`super::splice`]: the old file's bytes for every unchanged connection, copied
//! file to file, and fresh text only for the connections changed since the last fold. The
//! journal is emptied only after the vault's rename is durable; a crash in between replays
//! groups the vault already holds, which changes nothing.
//!
//! The file is also edited by hand, so every commit first asks whether it still is the file
//! sidekey last read or wrote: its stamp (device, inode, size, modification time; see
//! [`crate::atomic_file::FileStamp`]) against the one recorded then, under the same lock the
//! reloader holds for a whole reload, so reloads and commits never interleave. Only when the
//! stamp moved is the file read, and hashed, and built if its text changed; the writer then
//! publishes the file's records first and applies the waiting writes on top of them. If the
//! stamp moves again between that check and the rename, the commit is refused as a conflict
//! instead of overwriting the edit. A vault that does not load stops writes with a conflict
//! that names its first problem, while the last good snapshot serves. The stamp of each file
//! sidekey writes is recorded for the reloader too, whose watch sees every commit: it stats the
//! files, finds them unchanged, and neither reads nor parses what sidekey itself wrote.
//!
//! The journal needs no stamp of its own: only sidekey writes it, under the same lock, and
//! every reader of the vault (the reloader, this store's re-read after a hand edit, `sidekey
//! check`) applies it over the vault it read, so a hand edit never loses an answered write.
//!
//! With `SIDEKEY_ENCRYPTION_KEY` set, every secret is sealed before the file is written
//! ([`crate::config::sealed`]), in the journal as in the vault, so an API write never puts a
//! plaintext secret on disk: a
//! spliced commit seals the records it renders, and copies the others' sealed bytes as they
//! are (a hand edit that put a plaintext secret in is re-read first, which drops the splice
//! index, so that commit renders, and seals, everything).
//!
//! Versions come from the reloader's counter ([`crate::config::Versions`]), shared with the
//! builds of the file: a write and a reload never hand out the same version, and a reload
//! keeps the version of every record it did not see change.

use std::path::PathBuf;
use std::sync::Arc;

use std::io::{Read as _, Write as _};

use super::render::RenderError;
use super::splice::Splicer;
use super::{Backend, BoxFuture, StoreError};
use crate::config::reload::{FileStamps, Reloader, Seen};
use crate::config::{journal, load_files, Change, Snapshot};

/// The vault file store.
pub struct FileStore {
    inner: Arc<Inner>,
    /// The commit thread's queue (see [`COMMIT_NICE`]).
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The priority of the thread that renders, writes and fsyncs the vault: `SCHED_IDLE`, or
/// this nice value where that is refused ([`crate::background::lower_current_thread`]). A
/// commit of a large vault is milliseconds of CPU; at the default priority it takes them from
/// the proxy's requests on the same core (the proxy's p99 rose 1.65 × while writes ran, issue
/// 12), and even at nice 19 a commit kept the core for its whole slice once running. As an
/// idle-class thread it uses only time no request wants; writes still finish, later when the
/// core is saturated.
const COMMIT_NICE: i32 = crate::background::LOW_NICE;

struct Inner {
    reloader: Arc<Reloader>,
    read_only: bool,
    /// Where each connection is in the file last written, so a commit renders only what
    /// changed ([`super::splice`]). Used by the commit thread alone; the lock is for `Sync`.
    splicer: std::sync::Mutex<Splicer>,
    /// The journal's state; used by the commit thread alone, like the splicer.
    journal: std::sync::Mutex<JournalState>,
}

/// The journal beside the vault ([`crate::config::journal`]), as this process left it.
#[derive(Default)]
struct JournalState {
    /// Open for appending, and known to end at a whole group. `None` until this process has
    /// found the journal empty or folded it, and again after a failed append (whose torn
    /// line must not have groups appended after it): the next commit folds instead.
    file: Option<std::fs::File>,
    /// Bytes appended since the last fold.
    bytes: u64,
    /// Which connections (integration key, connection id) were appended since the last fold,
    /// each once: a fold renders them from the snapshot, so only their keys are kept (a
    /// `Change` is some 300 bytes even without its record's heap, and a list would grow with
    /// the writes, where this grows only with the connections they touch).
    since_fold: std::collections::HashSet<(String, String)>,
    /// The generation of the snapshot the vault file was last written with.
    vault_generation: u64,
}

/// A group is appended to the journal while the journal stays under this fraction of the
/// vault's size; the group that would pass it folds the journal instead. A fold is one
/// spliced rewrite of the vault (what every commit cost before the journal), so at 1/4 a
/// steady stream of writes rewrites the vault once per quarter of its size appended: at 10k
/// connections and 500 writes/s about every 4 s instead of 60–100 times a second, and a
/// restart replays at most a quarter of the vault's size.
const FOLD_FRACTION: u64 = 4;

/// A journal under this size never folds for its size (a tiny vault would fold every write).
const FOLD_MIN_BYTES: u64 = 64 << 10;

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("vault", &self.inner.reloader.paths().vault)
            .field("read_only", &self.inner.read_only)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    pub fn new(reloader: Arc<Reloader>, read_only: bool) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        // One thread for all the store's file work: commits are serialised by the writer
        // anyway, and a thread of its own can run at a lower priority than the request path.
        let spawned = std::thread::Builder::new()
            .name("sidekey-vault".into())
            .spawn(move || {
                crate::background::lower_current_thread(COMMIT_NICE);
                for job in rx {
                    // A panic in one job must not take the thread, and every later write, down;
                    // its caller sees the dropped reply as `Unavailable`.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the vault writer thread; writes will fail");
        }
        Self {
            inner: Arc::new(Inner {
                reloader,
                read_only,
                splicer: std::sync::Mutex::new(Splicer::new()),
                journal: std::sync::Mutex::new(JournalState::default()),
            }),
            jobs: std::sync::Mutex::new(tx),
        }
    }

    /// Runs blocking file work on the commit thread, off the runtime's worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .is_ok();
        let failed = || StoreError::Unavailable("the vault writer failed".into());
        if !sent {
            return Err(failed());
        }
        rx.await.unwrap_or_else(|_| Err(failed()))
    }
}

impl Inner {
    fn vault_path(&self) -> PathBuf {
        let p = &self.reloader.paths().vault;
        // Write through a symlink to its target rather than replacing the link with a file.
        std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())
    }

    fn refresh_blocking(&self, current: &Snapshot) -> Result<Option<Snapshot>, StoreError> {
        let mut last = self.reloader.lock_last_seen();
        // The file is what sidekey last read or wrote while its stamp says so: no read at all.
        let stamps = self.reloader.stamp_files();
        if stamps.is_some() && last.stamps == stamps {
            return Ok(None);
        }
        let src = load_files(self.reloader.paths()).map_err(|d| {
            StoreError::Conflict(format!(
                "the vault cannot be read: {}",
                d.first().map(ToString::to_string).unwrap_or_default()
            ))
        })?;
        let hash = self.reloader.content_hash(&src);
        if last.hash == Some(hash) {
            // Touched, or rewritten with the same text: nothing to apply.
            last.stamps = stamps;
            return Ok(None);
        }
        let generation = current.generation + 1;
        // The vault as edited, with the journal's groups applied over it: an API write that
        // was answered is never lost to a hand edit ([`crate::config::journal`]).
        let paths = self.reloader.paths();
        let fresh = journal::build(
            &src,
            &paths.vault,
            &self.reloader.options(generation),
            Some(current),
        )
        .map_err(|d| {
            StoreError::Conflict(format!(
                "the vault was edited and does not load; fix it first: {}",
                d.first().map(ToString::to_string).unwrap_or_default()
            ))
        })?;
        *last = Seen {
            hash: Some(hash),
            stamps,
        };
        self.reloader.set_generation(generation);
        Ok(Some(fresh))
    }

    fn commit_blocking(&self, next: &Snapshot, changes: &[Change]) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(
                "the vault is read-only (--vault-read-only); change it where it is managed".into(),
            ));
        }
        let mut last = self.reloader.lock_last_seen();
        // A reload that published the file's records after this write took its base would be
        // overwritten by it: apply the write again on top of the reload instead.
        if self.reloader.generation() + 1 != next.generation {
            return Err(StoreError::Conflict(
                "the configuration was reloaded while this write was being made".into(),
            ));
        }
        // Under the lock, the stamps still matching means no hand edit since `refresh`; a
        // mismatch sends the writer back to `refresh`, which reads the file.
        let stamps = self.reloader.stamp_files();
        let Some(stamps) = stamps.filter(|s| last.stamps == Some(*s)) else {
            return Err(StoreError::Conflict(
                "the vault was edited while this write was being made".into(),
            ));
        };
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.reloader.encryption_key().map(|k| &**k);
        let line = match journal.file {
            Some(_) => {
                journal::encode(changes, key).map_err(|e| StoreError::Unavailable(e.to_string()))?
            }
            None => None,
        };
        let vault_len = std::fs::metadata(&self.reloader.paths().vault).map_or(0, |m| m.len());
        let room = (vault_len / FOLD_FRACTION).max(FOLD_MIN_BYTES);
        if let Some(line) = line.filter(|l| journal.bytes + l.len() as u64 <= room) {
            let started = std::time::Instant::now();
            let appended = journal
                .file
                .as_mut()
                .map(|f| f.write_all(&line).and_then(|()| f.sync_data()));
            if let Some(Err(e)) = appended {
                // A torn line may be at the end: no group goes after it; the next commit folds.
                journal.file = None;
                return Err(write_error(&e));
            }
            journal.bytes += line.len() as u64;
            for ch in changes {
                if let Some(k) = changed_key(ch) {
                    journal.since_fold.insert(k);
                }
            }
            tracing::debug!(
                generation = next.generation,
                journal_bytes = journal.bytes,
                write_us = started.elapsed().as_micros() as u64,
                "journal appended"
            );
            self.reloader.set_generation(next.generation);
            return Ok(());
        }
        let stamp = self.fold(&mut journal, next, changes)?;
        // The text is not hashed: the stamp is enough to know the file is this one.
        *last = Seen {
            hash: None,
            stamps: Some(FileStamps {
                providers: stamps.providers,
                vault: stamp,
            }),
        };
        self.reloader.set_generation(next.generation);
        Ok(())
    }

    /// Writes `next` to the vault (spliced from the last file written when it can be, with
    /// `extra`, the changes of the group being committed, and everything the journal held),
    /// then empties the journal. The caller holds the reloader's lock and checked the stamps.
    fn fold(
        &self,
        journal: &mut JournalState,
        next: &Snapshot,
        extra: &[Change],
    ) -> Result<crate::atomic_file::FileStamp, StoreError> {
        let path = self.vault_path();
        let header = read_header(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot read the vault: {e}")))?;
        let key = self.reloader.encryption_key().map(|k| &**k);
        let started = std::time::Instant::now();
        // The splicer takes changes; only their keys matter to it (the text comes from
        // `next`), so each journaled connection goes in as a key-only delete.
        let mut changes: Vec<Change> = journal
            .since_fold
            .iter()
            .map(|(pck, id)| Change::DeleteConnection {
                provider_config_key: pck.clone(),
                connection_id: id.clone(),
            })
            .collect();
        changes.extend_from_slice(extra);
        let written = self
            .splicer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_since(
                &path,
                &header,
                next,
                &changes,
                journal.vault_generation,
                key,
            );
        let (stamp, how) = match written {
            Ok(w) => w,
            Err(e) => {
                // Nothing was replaced; the journal still holds its groups (the next fold,
                // with no index, renders everything).
                return Err(match e {
                    RenderError::Changed => StoreError::Conflict(
                        "the vault was edited while this write was being made".into(),
                    ),
                    RenderError::Io(e) => write_error(&e),
                    e => StoreError::Unavailable(e.to_string()),
                });
            }
        };
        // Only now, with every group of it in the vault, is the journal emptied: a crash in
        // between replays groups the vault already holds, which changes nothing.
        let folded = journal.bytes;
        journal.since_fold = Default::default();
        journal.file = None;
        journal.bytes = 0;
        journal.vault_generation = next.generation;
        // A journal that cannot be emptied would replay its old groups over every later
        // write at the next start: refuse this commit (the vault holds it, unanswered, like
        // a failed fsync) and every later one until it can be.
        let emptied = empty_journal(&journal::path(&path)).map_err(|e| {
            // The vault now holds a group the writer will not publish: render it whole next.
            self.splicer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget();
            write_error(&e)
        })?;
        journal.file = Some(emptied);
        tracing::debug!(
            generation = next.generation,
            written = ?how,
            journal_folded_bytes = folded,
            write_us = started.elapsed().as_micros() as u64,
            "vault written"
        );
        Ok(stamp)
    }

    /// Folds the journal when writes have gone idle, if `current` is what it and the vault
    /// hold: no reload or hand edit since it was published. Otherwise the next commit folds.
    fn fold_idle(&self, current: &Snapshot) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let mut last = self.reloader.lock_last_seen();
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if journal.file.is_some() && journal.bytes == 0 {
            return Ok(());
        }
        if journal.file.is_none() && !journal_has_groups(&self.vault_path()) {
            // Nothing to fold (no journal, or an empty one): the first commit opens it.
            return Ok(());
        }
        if self.reloader.generation() != current.generation {
            return Ok(());
        }
        let stamps = self.reloader.stamp_files();
        let Some(stamps) = stamps.filter(|s| last.stamps == Some(*s)) else {
            return Ok(());
        };
        let stamp = self.fold(&mut journal, current, &[])?;
        *last = Seen {
            hash: None,
            stamps: Some(FileStamps {
                providers: stamps.providers,
                vault: stamp,
            }),
        };
        Ok(())
    }
}

/// The connection a journaled change touched: its integration key and id.
fn changed_key(ch: &Change) -> Option<(String, String)> {
    let (pck, id) = match ch {
        Change::PutConnection(raw, _) => (&raw.provider_config_key, &raw.connection_id),
        Change::DeleteConnection {
            provider_config_key,
            connection_id,
        } => (provider_config_key, connection_id),
        _ => return None,
    };
    Some((pck.clone(), id.clone()))
}

/// Whether the journal beside `vault` holds anything (an unreadable one counts: fold it).
fn journal_has_groups(vault: &std::path::Path) -> bool {
    match std::fs::metadata(journal::path(vault)) {
        Ok(m) => m.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Opens (or creates, mode 0600) the journal at `path` for appending, emptied and synced.
fn empty_journal(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let existed = path.exists();
    let f = opts.open(path)?;
    if f.metadata()?.len() > 0 {
        f.set_len(0)?;
        f.sync_all()?;
    }
    if !existed {
        // The new name must survive a crash too, before any group is acknowledged in it.
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(f)
}

/// What a failed write of the vault means to the caller. A file system or directory that
/// cannot be written (a Kubernetes Secret mount, a read-only bind mount, a directory the
/// process may not create files in) is the read-only vault of `--vault-read-only` without the
/// flag: 409 `store_read_only`, and refreshed tokens go to the state file. `EROFS` is
/// `ReadOnlyFilesystem`; `EACCES` and `EPERM` are both `PermissionDenied`. Anything else (a
/// full disk, an I/O error) may pass, so it stays `Unavailable` (503).
fn write_error(e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
            StoreError::ReadOnly(format!(
                "the vault cannot be written here ({e}); change it where it is managed, or start \
                 sidekey with --vault-read-only"
            ))
        }
        _ => StoreError::Unavailable(format!("cannot write the vault: {e}")),
    }
}

/// The vault's leading comment block (what every rewrite keeps), read from the start of the
/// file only: the rest of it is about to be replaced.
fn read_header(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(path)?;
    let mut r = std::io::BufReader::new(f).take(1 << 20);
    let mut head = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            // Not text: no comment block to keep (the file does not load anyway).
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => break,
            Err(e) => return Err(e),
        }
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
        head.push_str(&line);
        if !line.ends_with('\n') {
            head.push('\n');
        }
    }
    Ok(crate::config::vault::leading_comments(&head))
}

impl Backend for FileStore {
    fn refresh(
        &self,
        current: Arc<Snapshot>,
    ) -> BoxFuture<'_, Result<Option<Snapshot>, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(self.blocking(move || inner.refresh_blocking(&current)))
    }

    fn commit(
        &self,
        next: Arc<Snapshot>,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(self.blocking(move || inner.commit_blocking(&next, &changes)))
    }

    fn next_version(&self) -> u64 {
        self.inner.reloader.versions().next()
    }

    fn idle(&self, current: Arc<Snapshot>) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(self.blocking(move || inner.fold_idle(&current)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn unwritable_file_systems_are_read_only_stores() {
        // EROFS (a read-only mount), EACCES and EPERM (no right to create the temporary file
        // or rename over the vault), as the kernel reports them.
        for errno in [libc::EROFS, libc::EACCES, libc::EPERM] {
            let e = io::Error::from_raw_os_error(errno);
            match write_error(&e) {
                StoreError::ReadOnly(m) => assert!(m.contains("--vault-read-only"), "{m}"),
                other => panic!("errno {errno}: {other:?}"),
            }
        }
        for kind in [
            io::ErrorKind::ReadOnlyFilesystem,
            io::ErrorKind::PermissionDenied,
        ] {
            assert!(matches!(
                write_error(&io::Error::from(kind)),
                StoreError::ReadOnly(_)
            ));
        }
    }

    #[test]
    fn other_write_failures_stay_unavailable() {
        for e in [
            io::Error::from_raw_os_error(libc::ENOSPC),
            io::Error::from_raw_os_error(libc::EIO),
            io::Error::other("boom"),
        ] {
            assert!(matches!(write_error(&e), StoreError::Unavailable(_)), "{e}");
        }
    }
}
