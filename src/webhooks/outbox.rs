//! Where webhook events wait until a receiver has taken them: the [`Outbox`] seam and its
//! two implementations, an append-only file ([`FileOutbox`]) and memory ([`MemoryOutbox`]).
//!
//! An event counts as committed once [`Outbox::append`] has returned: for the file that is
//! after `fdatasync`, so a `kill -9` (or a power cut) after that point leaves it on disk, and
//! the next start delivers it. A delivered (or abandoned) event is removed with
//! [`Outbox::remove`], also synced, so it is not sent again after a restart; the window
//! between a receiver's 2xx and that sync is the one place an event can go out twice
//! (at-least-once, as with every webhook sender).
//!
//! The file is JSON lines: `{"id":N,"url":…,"body":…,"at":ms}` for an event, `{"done":[N,…]}`
//! for removals, `{"next":N}` at the head of a compacted file (ids keep growing across
//! compactions). A last line cut short by a crash was never synced, so never committed: it is
//! skipped, as is any other line that does not parse (with a warning). When the file has grown
//! past [`COMPACT_BYTES`] and most of it is dead, it is rewritten atomically with only the
//! pending events. Bodies hold no credential (see `super::payload`); the file is still 0600.
//!
//! A fleet on the PostgreSQL store shares one outbox instead ([`SharedOutbox`], implemented
//! in `store::postgres::outbox`): any replica may deliver any committed event, so an event
//! committed by a replica that dies is delivered by another. There an event is not queued in
//! memory but *claimed* ([`SharedOutbox::claim`]) for one attempt: no other replica can claim
//! it until that claim is finished or its holder is gone. [`Store`] is which of the two an app
//! was given.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A file that has grown past this and is mostly delivered events is rewritten.
pub const COMPACT_BYTES: u64 = 256 * 1024;

/// One committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    /// Where it goes (the webhook URL or the connection's override, decided when it happened).
    pub url: String,
    /// The exact body; signed at delivery, with the key current then.
    pub body: String,
    /// When it was committed (Unix milliseconds): events older than the give-up age are
    /// dropped undelivered.
    pub at: i64,
}

/// Durable storage of pending events. Every call is blocking I/O: call it from a blocking
/// thread (the hooks' tasks use `spawn_blocking`).
pub trait Outbox: Send + Sync + 'static {
    /// Commits new events (url, body), durable before it returns; assigns their ids.
    fn append(&self, events: Vec<(String, String)>, at: i64) -> io::Result<Vec<Record>>;
    /// Forgets events that were delivered or abandoned, durable before it returns.
    fn remove(&self, ids: &[u64]) -> io::Result<()>;
    /// The events committed and not removed, oldest first (read at start).
    fn pending(&self) -> io::Result<Vec<Record>>;
    /// `file` or `memory`, for the log.
    fn kind(&self) -> &'static str;
}

/// The outbox an app commits to: this process's ([`Outbox`]) or the fleet's ([`SharedOutbox`]).
#[derive(Clone)]
pub enum Store {
    Local(Arc<dyn Outbox>),
    Shared(Arc<dyn SharedOutbox>),
}

impl Store {
    /// For the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(o) => o.kind(),
            Self::Shared(o) => o.kind(),
        }
    }
}

impl From<Arc<dyn Outbox>> for Store {
    fn from(o: Arc<dyn Outbox>) -> Self {
        Self::Local(o)
    }
}

impl From<Arc<dyn SharedOutbox>> for Store {
    fn from(o: Arc<dyn SharedOutbox>) -> Self {
        Self::Shared(o)
    }
}

/// An outbox several processes deliver from. Every call is asynchronous (a database).
pub trait SharedOutbox: Send + Sync + 'static {
    /// Commits new events (url, body), durable before it resolves; returns how many.
    fn append(&self, events: Vec<(String, String)>) -> BoxFuture<'_, io::Result<usize>>;
    /// Claims the event due first, for one attempt: until the claim is finished (or dropped,
    /// or its process dies, or `hold` has passed without a word from it) no other process
    /// claims it. [`Claimed::Idle`] when nothing is due.
    fn claim(&self, hold: Duration) -> BoxFuture<'_, io::Result<Claimed>>;
    /// `postgres`, for the log.
    fn kind(&self) -> &'static str;
}

/// What [`SharedOutbox::claim`] found.
pub enum Claimed {
    Event(Claim),
    /// Nothing to claim: `pending` events wait (some may be held by other processes), and the
    /// first that is not due yet will be in `next_due` (`None`: none is).
    Idle {
        pending: usize,
        next_due: Option<Duration>,
    },
}

/// One claimed event; finish it with [`Claim::finish`]. Dropped unfinished, the claim is
/// released and the event stays due.
pub struct Claim {
    pub record: Record,
    /// Attempts made before this one (by any process).
    pub attempts: u32,
    pub finisher: Box<dyn Finisher>,
}

impl Claim {
    pub async fn finish(self, how: Finish) -> io::Result<()> {
        self.finisher.finish(how).await
    }
}

/// How a claimed attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Delivered, refused for good, or too old: never sent again.
    Done,
    /// Due again after this long.
    RetryAfter(Duration),
}

/// Records the end of a claimed attempt and releases the claim.
pub trait Finisher: Send {
    fn finish(self: Box<Self>, how: Finish) -> BoxFuture<'static, io::Result<()>>;
}

/// Pending events in memory only: a restart loses them (a read-only vault with no `--state`
/// and no `--webhook-outbox`, and tests).
#[derive(Default)]
pub struct MemoryOutbox {
    inner: Mutex<(u64, BTreeMap<u64, Record>)>,
}

impl Outbox for MemoryOutbox {
    fn append(&self, events: Vec<(String, String)>, at: i64) -> io::Result<Vec<Record>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(events.len());
        for (url, body) in events {
            g.0 += 1;
            let r = Record {
                id: g.0,
                url,
                body,
                at,
            };
            g.1.insert(r.id, r.clone());
            out.push(r);
        }
        Ok(out)
    }
    fn remove(&self, ids: &[u64]) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            g.1.remove(id);
        }
        Ok(())
    }
    fn pending(&self) -> io::Result<Vec<Record>> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(g.1.values().cloned().collect())
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Event(Record),
    Done { done: Vec<u64> },
    Next { next: u64 },
}

struct FileState {
    file: File,
    /// Bytes in the file now.
    len: u64,
    next: u64,
    pending: BTreeMap<u64, Record>,
    /// Bytes the pending events' lines take (to tell a file that is mostly dead).
    live: u64,
}

/// The append-only outbox file (see the module docs).
pub struct FileOutbox {
    path: PathBuf,
    state: Mutex<FileState>,
}

impl FileOutbox {
    /// Opens (or creates, 0600) the outbox at `path` and reads what is pending in it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (next, pending, live) = match File::open(path) {
            Ok(f) => read(path, f)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (1, BTreeMap::new(), 0),
            Err(e) => return Err(e),
        };
        let created = !path.exists();
        let file = open_append(path)?;
        if created {
            sync_dir(path);
        }
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(FileState {
                file,
                len,
                next,
                pending,
                live,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rewrites the file with only the pending events, atomically (temporary file, fsync,
    /// rename), then appends to the new one.
    fn compact(&self, st: &mut FileState) -> io::Result<()> {
        let mut text = line(&Line::Next { next: st.next })?;
        for r in st.pending.values() {
            text.push_str(&line(&Line::Event(r.clone()))?);
        }
        crate::atomic_file::write(&self.path, text.as_bytes(), 0o600)?;
        st.file = open_append(&self.path)?;
        st.len = text.len() as u64;
        tracing::debug!(target: "sidekey::webhooks", bytes = st.len, pending = st.pending.len(), "webhook outbox compacted");
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Makes a new file's directory entry durable too (best effort: not every filesystem lets a
/// directory be opened for sync).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn line(l: &Line) -> io::Result<String> {
    let mut s = serde_json::to_string(l).map_err(io::Error::other)?;
    s.push('\n');
    Ok(s)
}

type Loaded = (u64, BTreeMap<u64, Record>, u64);

/// Replays the file: events in, removals out. A line that does not parse is skipped: at the
/// end it is a write a crash cut short (never synced, so never committed).
fn read(path: &Path, f: File) -> io::Result<Loaded> {
    let mut next = 1;
    let mut pending = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for (n, l) in BufReader::new(f).split(b'\n').enumerate() {
        let l = l?;
        if l.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(&l) {
            Ok(Line::Event(r)) => {
                next = next.max(r.id + 1);
                sizes.insert(r.id, l.len() as u64 + 1);
                pending.insert(r.id, r);
            }
            Ok(Line::Done { done }) => {
                for id in done {
                    pending.remove(&id);
                    sizes.remove(&id);
                }
            }
            Ok(Line::Next { next: n }) => next = next.max(n),
            Err(_) => tracing::warn!(target: "sidekey::webhooks", path = %path.display(),
                line = n + 1, "skipping an unreadable line of the webhook outbox (a write cut short by a crash?)"),
        }
    }
    Ok((next, pending, sizes.values().sum()))
}

impl Outbox for FileOutbox {
    fn append(&self, events: Vec<(String, String)>, at: i64) -> io::Result<Vec<Record>> {
        let mut st = self.lock();
        let mut text = String::new();
        let mut out = Vec::with_capacity(events.len());
        let mut id = st.next;
        let mut sizes = Vec::with_capacity(events.len());
        for (url, body) in events {
            let r = Record { id, url, body, at };
            id += 1;
            let l = line(&Line::Event(r.clone()))?;
            sizes.push(l.len() as u64);
            text.push_str(&l);
            out.push(r);
        }
        st.file.write_all(text.as_bytes())?;
        st.file.sync_data()?;
        st.next = id;
        st.len += text.len() as u64;
        st.live += sizes.iter().sum::<u64>();
        for r in &out {
            st.pending.insert(r.id, r.clone());
        }
        Ok(out)
    }

    fn remove(&self, ids: &[u64]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        let text = line(&Line::Done { done: ids.to_vec() })?;
        st.file.write_all(text.as_bytes())?;
        st.file.sync_data()?;
        st.len += text.len() as u64;
        for id in ids {
            if let Some(r) = st.pending.remove(id) {
                let size = line(&Line::Event(r))?.len() as u64;
                st.live = st.live.saturating_sub(size);
            }
        }
        if st.len > COMPACT_BYTES && st.live.saturating_mul(4) < st.len {
            // A failed compaction leaves the old file, which is still right: only logged.
            if let Err(e) = self.compact(&mut st) {
                tracing::warn!(target: "sidekey::webhooks", error = %e, "cannot compact the webhook outbox");
            }
        }
        Ok(())
    }

    fn pending(&self) -> io::Result<Vec<Record>> {
        Ok(self.lock().pending.values().cloned().collect())
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    "http://h/".to_string(),
                    format!("{{\"n\":{i},\"s\":\"a\\nb\"}}"),
                )
            })
            .collect()
    }

    #[test]
    fn survives_reopen_and_forgets_removed_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vault.yaml.outbox");
        let o = FileOutbox::open(&p).expect("open");
        let rs = o.append(ev(3), 5).expect("append");
        assert_eq!(rs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        o.remove(&[2]).expect("remove");
        drop(o);
        let o = FileOutbox::open(&p).expect("reopen");
        let ids: Vec<u64> = o.pending().expect("pending").iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(o.pending().expect("pending")[0].body, rs[0].body);
        // Ids keep growing after a restart.
        assert_eq!(o.append(ev(1), 6).expect("append")[0].id, 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_torn_last_line_is_not_an_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("o");
        let o = FileOutbox::open(&p).expect("open");
        o.append(ev(1), 1).expect("append");
        drop(o);
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(br#"{"id":2,"url":"http://h/","bo"#)
            .expect("write");
        drop(f);
        let o = FileOutbox::open(&p).expect("reopen");
        assert_eq!(o.pending().expect("pending").len(), 1);
    }

    #[test]
    fn compacts_when_mostly_delivered_and_keeps_ids_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("o");
        let o = FileOutbox::open(&p).expect("open");
        let big = "x".repeat(4096);
        let mut last = 0;
        for _ in 0..100 {
            let r = o
                .append(vec![("http://h/".into(), big.clone())], 1)
                .expect("append");
            last = r[0].id;
            o.remove(&[last]).expect("remove");
        }
        let keep = o.append(ev(1), 1).expect("append")[0].id;
        let len = std::fs::metadata(&p).expect("meta").len();
        assert!(len < COMPACT_BYTES, "compacted: {len}");
        drop(o);
        let o = FileOutbox::open(&p).expect("reopen");
        let ids: Vec<u64> = o.pending().expect("pending").iter().map(|r| r.id).collect();
        assert_eq!(ids, [keep]);
        assert!(o.append(ev(1), 1).expect("append")[0].id > last);
    }
}
