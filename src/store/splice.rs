//! Commits that render only what changed: the vault file written as the previous file's bytes
//! for every unchanged connection, copied file to file, plus fresh text for the connections
//! that were put.
//!
//! A full render of the vault costs about 2 µs a connection (`Connection::record()` clones
//! every record, the tables are sorted, every scalar is quoted; 3.5 × that when every secret
//! is sealed anew), and it ran on every group commit: 20 ms at 10k connections, on the core
//! that also serves the proxy (issue 12, BENCHMARKS.md). A group of 16 writes changes 16
//! records. So the file store keeps, for the file it last wrote, where each connection's text
//! is, and the next commit writes:
//!
//! - the head rendered whole: the old file's leading comments, the vault caller keys and the
//!   integrations (a handful of records; a commit that puts or deletes an integration renders
//!   everything, since an integration owns connections);
//! - `connections:`, then the old file's connection items in their order, each run of unchanged
//!   ones copied with one `io::copy` between the two `File`s (on Linux `copy_file_range`: the
//!   kernel moves the bytes, no CPU in userspace), a put connection rendered in place of its
//!   old text, a deleted one left out;
//! - connections that are new, rendered at the end of the section (the file's end).
//!
//! So the file is sorted after a full render and keeps its order after; new connections go at
//! the end, as a hand-appended one would. Every item starts at column 0 (`- connection_id:`),
//! so appending by hand keeps working. Unchanged sealed connections keep their sealed bytes;
//! only the put ones are sealed anew. The write itself is [`crate::atomic_file::write_with`]:
//! temporary file, fsync, rename, fsync of the directory, so a crash leaves the old file or
//! the new one, and the commit is durable before any writer is answered.
//!
//! **The index** ([`Spans`]): for the last file written, its stamp and generation, the offset
//! of the first connection, and per connection in file order a 64-bit hash of its key
//! (integration key, connection id; foldhash seeded per process, so ids chosen by API callers
//! cannot be made to collide on purpose) and the length of its text: 12 bytes a connection in
//! two vectors (1.2 MB at 100k connections; a commit builds the next index beside it, so 24
//! bytes a connection while it runs). Offsets are the running sum of the lengths, found by one
//! linear pass over those 12 bytes a connection per commit (small beside copying the file's
//! bytes, which every commit does anyway) instead of a map from key to position, which would
//! cost about three times the memory. The index is used only when the file
//! on disk is still the one it describes (same stamp, checked on the open descriptor that the
//! bytes are copied from, and again after copying) and the caller's changes are every change
//! since the generation it was written at (the next generation's, or, for a fold of the
//! journal, everything appended to it since; [`Splicer::write_since`]); anything else — the first commit, a hand edit the store or the reloader
//! re-read, a failed commit — renders everything and rebuilds the index.
//!
//! **Collisions.** A full render keeps its index only if all hashes differ. A spliced commit
//! copies every old item whose hash is not a changed key's; an unchanged connection whose hash
//! equals a changed key's would be left out, so the commit counts what it is about to write
//! against the snapshot's connection count and renders everything when they differ (the
//! spliced set is never larger than the right one, so equal counts mean equal sets). Two
//! changed keys with one hash also render everything.

use std::io::{self, Seek as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use super::render::{self, RenderError};
use crate::atomic_file::FileStamp;
use crate::config::sealed::EncryptionKey;
use crate::config::snapshot::Connection;
use crate::config::{Change, Snapshot};

/// Where each connection's text is in the file last written (see the module docs).
#[derive(Debug)]
struct Spans {
    stamp: FileStamp,
    generation: u64,
    /// Offset of the first connection item.
    start: u64,
    /// Per connection in file order: the hash of its key, and its text's length.
    hashes: Vec<u64>,
    lens: Vec<u32>,
}

/// How a commit was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Rendered whole (and the index rebuilt).
    Full,
    /// Spliced: `copied` bytes from the old file in `runs` copies, `rendered` connections.
    Spliced {
        copied: u64,
        runs: usize,
        rendered: usize,
    },
}

/// The file store's splicer: the index of the last file written, and the seeded hasher.
#[derive(Debug)]
pub struct Splicer {
    hasher: foldhash::fast::RandomState,
    /// Bits of the hash kept: all of them, but the tests keep a few, to make collisions.
    mask: u64,
    spans: Option<Spans>,
}

impl Default for Splicer {
    fn default() -> Self {
        Self {
            hasher: Default::default(),
            mask: !0,
            spans: None,
        }
    }
}

/// One step of a spliced commit.
enum Op<'a> {
    /// Bytes `from..from + len` of the old file.
    Copy { from: u64, len: u64 },
    /// A connection rendered anew, whose length goes to the new index at `slot`.
    Render {
        conn: &'a Arc<Connection>,
        slot: usize,
    },
}

struct Plan<'a> {
    old: std::fs::File,
    ops: Vec<Op<'a>>,
    hashes: Vec<u64>,
    lens: Vec<u32>,
}

impl Splicer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops the index: the next commit renders everything.
    pub fn forget(&mut self) {
        self.spans = None;
    }

    /// Bytes the index holds now (for the memory figures).
    pub fn index_bytes(&self) -> usize {
        self.spans
            .as_ref()
            .map_or(0, |s| s.hashes.capacity() * 8 + s.lens.capacity() * 4)
    }

    fn hash(&self, provider_config_key: &str, connection_id: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one((provider_config_key, connection_id)) & self.mask
    }

    /// Writes `next` to `path` atomically (mode 0600): spliced from the file the index
    /// describes when it can be, else rendered whole. `changes` are every change applied since
    /// the file last written (the group's). Returns the new file's stamp and how it was made.
    /// On an error nothing was replaced and the index is dropped.
    pub fn write(
        &mut self,
        path: &Path,
        header: &str,
        next: &Snapshot,
        changes: &[Change],
        key: Option<&EncryptionKey>,
    ) -> Result<(FileStamp, Written), RenderError> {
        let base = next.generation.saturating_sub(1);
        self.write_since(path, header, next, changes, base, key)
    }

    /// [`Splicer::write`] where `changes` are every change since the file was written at
    /// generation `base`, any number of generations ago: a fold of the journal, whose groups
    /// were appended to it instead of rewriting the vault ([`crate::config::journal`]).
    pub fn write_since(
        &mut self,
        path: &Path,
        header: &str,
        next: &Snapshot,
        changes: &[Change],
        base: u64,
        key: Option<&EncryptionKey>,
    ) -> Result<(FileStamp, Written), RenderError> {
        let spans = self.spans.take();
        let plan = spans
            .as_ref()
            .filter(|s| s.generation == base)
            .and_then(|s| self.plan(s, path, next, changes));
        match (plan, spans) {
            (Some(plan), Some(spans)) => self.write_spliced(path, header, next, key, plan, &spans),
            _ => self.write_full(path, header, next, key),
        }
    }

    fn write_full(
        &mut self,
        path: &Path,
        header: &str,
        next: &Snapshot,
        key: Option<&EncryptionKey>,
    ) -> Result<(FileStamp, Written), RenderError> {
        let n = next.connection_count();
        let mut hashes = Vec::with_capacity(n);
        let mut lens = Vec::with_capacity(n);
        let mut fits = true;
        let mut start = 0;
        let stamp = fill(path, |w| {
            start = render::write_snapshot_spans(w, header, next, key, |pck, id, len| {
                hashes.push(self.hash(pck, id));
                fits &= u32::try_from(len).is_ok();
                lens.push(len as u32);
            })?;
            Ok(())
        })?;
        // Distinct hashes, or no index (see the module docs).
        let mut sorted = hashes.clone();
        sorted.sort_unstable();
        let distinct = sorted.windows(2).all(|p| p[0] != p[1]);
        drop(sorted);
        if fits && distinct && !hashes.is_empty() {
            self.spans = Some(Spans {
                stamp,
                generation: next.generation,
                start,
                hashes,
                lens,
            });
        }
        Ok((stamp, Written::Full))
    }

    /// The steps of a spliced commit, or `None` when it must render everything.
    fn plan<'a>(
        &self,
        spans: &Spans,
        path: &Path,
        next: &'a Snapshot,
        changes: &[Change],
    ) -> Option<Plan<'a>> {
        // The connections that changed, by hash; anything else that changes the file below
        // the head renders everything.
        let mut changed: Vec<(u64, &str, &str)> = Vec::with_capacity(changes.len());
        for ch in changes {
            let (pck, id) = match ch {
                Change::PutConnection(raw, _) => {
                    (raw.provider_config_key.as_str(), raw.connection_id.as_str())
                }
                Change::DeleteConnection {
                    provider_config_key,
                    connection_id,
                } => (provider_config_key.as_str(), connection_id.as_str()),
                Change::PutKey(_) | Change::DeleteKey(_) => continue,
                Change::PutIntegration(_) | Change::DeleteIntegration(_) => return None,
            };
            changed.push((self.hash(pck, id), pck, id));
        }
        changed.sort_unstable();
        changed.dedup();
        if changed.windows(2).any(|p| p[0].0 == p[1].0) {
            return None;
        }
        let count = next.connection_count();
        if count == 0 {
            return None;
        }
        let old = std::fs::File::open(path).ok()?;
        let meta = old.metadata().ok()?;
        if FileStamp::of(&meta) != spans.stamp {
            return None;
        }
        let total: u64 = spans.lens.iter().map(|&l| u64::from(l)).sum();
        if spans.start + total != meta.len() {
            return None;
        }

        let mut matched = vec![false; changed.len()];
        let mut ops: Vec<Op<'a>> = Vec::with_capacity(2 * changed.len() + 1);
        let mut hashes = Vec::with_capacity(count);
        let mut lens = Vec::with_capacity(count);
        let mut pos = spans.start;
        for (&h, &len) in spans.hashes.iter().zip(&spans.lens) {
            match changed.binary_search_by_key(&h, |c| c.0) {
                Ok(j) => {
                    matched[j] = true;
                    let (_, pck, id) = changed[j];
                    if let Some(conn) = next.connection(pck, id) {
                        ops.push(Op::Render {
                            conn,
                            slot: hashes.len(),
                        });
                        hashes.push(h);
                        lens.push(0);
                    }
                }
                Err(_) => {
                    match ops.last_mut() {
                        Some(Op::Copy { from, len: run }) if *from + *run == pos => {
                            *run += u64::from(len)
                        }
                        _ => ops.push(Op::Copy {
                            from: pos,
                            len: u64::from(len),
                        }),
                    }
                    hashes.push(h);
                    lens.push(len);
                }
            }
            pos += u64::from(len);
        }
        for (&(h, pck, id), seen) in changed.iter().zip(&matched) {
            if *seen {
                continue;
            }
            if let Some(conn) = next.connection(pck, id) {
                ops.push(Op::Render {
                    conn,
                    slot: hashes.len(),
                });
                hashes.push(h);
                lens.push(0);
            }
        }
        // A collision left an unchanged connection out: render everything.
        (hashes.len() == count).then_some(Plan {
            old,
            ops,
            hashes,
            lens,
        })
    }

    fn write_spliced(
        &mut self,
        path: &Path,
        header: &str,
        next: &Snapshot,
        key: Option<&EncryptionKey>,
        plan: Plan<'_>,
        spans: &Spans,
    ) -> Result<(FileStamp, Written), RenderError> {
        let Plan {
            mut old,
            ops,
            hashes,
            mut lens,
        } = plan;
        let mut head = Vec::with_capacity(4096);
        render::write_head(&mut head, header, next, key)?;
        head.extend_from_slice(b"connections:\n");
        let start = head.len() as u64;
        let (mut copied, mut runs, mut rendered) = (0u64, 0usize, 0usize);
        let mut item = Vec::with_capacity(1024);
        let stamp = fill(path, |w| {
            w.write_all(&head)?;
            for op in &ops {
                match *op {
                    Op::Copy { from, len } => {
                        w.flush()?;
                        old.seek(io::SeekFrom::Start(from))?;
                        let file: &mut std::fs::File = w.get_mut();
                        let n = copy_in_chunks(&mut old, file, len)?;
                        if n != len {
                            return Err(RenderError::Changed);
                        }
                        copied += n;
                        runs += 1;
                    }
                    Op::Render { conn, slot } => {
                        item.clear();
                        render::write_one_connection(&mut item, conn, key)?;
                        w.write_all(&item)?;
                        lens[slot] = u32::try_from(item.len()).map_err(|_| {
                            RenderError::Io(io::Error::other("a connection's text is over 4 GiB"))
                        })?;
                        rendered += 1;
                    }
                }
            }
            // Copied from the file the index describes, unchanged to the last byte.
            if FileStamp::of(&old.metadata()?) != spans.stamp {
                return Err(RenderError::Changed);
            }
            Ok(())
        })?;
        self.spans = Some(Spans {
            stamp,
            generation: next.generation,
            start,
            hashes,
            lens,
        });
        Ok((
            stamp,
            Written::Spliced {
                copied,
                runs,
                rendered,
            },
        ))
    }
}

/// [`crate::atomic_file::write_with`] with a fill that fails with a [`RenderError`], given back
/// as it was.
fn fill(
    path: &Path,
    f: impl FnOnce(&mut io::BufWriter<&mut std::fs::File>) -> Result<(), RenderError>,
) -> Result<FileStamp, RenderError> {
    let mut failed = None;
    let written = crate::atomic_file::write_with(path, 0o600, |w| {
        f(w).map_err(|e| match e {
            RenderError::Io(e) => e,
            other => {
                let msg = other.to_string();
                failed = Some(other);
                io::Error::other(msg)
            }
        })
    });
    match (written, failed) {
        (Ok(stamp), _) => Ok(stamp),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(RenderError::Io(e)),
    }
}

/// The most bytes one copy call moves. A kernel without preemption (`PREEMPT_NONE`, the
/// default of many distribution kernels) runs a system call to its end before another
/// thread gets the core, whatever the priorities: one `copy_file_range` of a 10k-connection
/// vault (1.7 MB) held the proxy's requests for hundreds of microseconds. Between calls of
/// at most this many bytes (about 20 µs of copying each) the scheduler can run them first.
const COPY_CHUNK: u64 = 64 * 1024;

/// Copies `len` bytes from `from`'s position to `to` (on Linux with `copy_file_range`, file
/// to file in the kernel), in calls of at most [`COPY_CHUNK`] bytes; the bytes copied, less
/// than `len` only if `from` ended first.
fn copy_in_chunks(from: &mut std::fs::File, to: &mut std::fs::File, len: u64) -> io::Result<u64> {
    let mut done = 0;
    while done < len {
        let want = (len - done).min(COPY_CHUNK);
        let n = io::copy(&mut io::Read::take(&mut *from, want), to)?;
        done += n;
        if n < want {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vault::{RawConnection, RawCredentials, RawIntegration, RawVault};
    use crate::config::{snapshot, BuildOptions, Sources};
    use crate::secret::Secret;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    const PROVIDERS: &str = "hdr:\n  auth_mode: API_KEY\n  proxy:\n    base_url: https://h.example.com\n    headers: {authorization: \"Bearer ${apiKey}\"}\nbasic:\n  auth_mode: BASIC\n  proxy: {base_url: \"https://b.example.com\"}\n";
    const INTS: [&str; 2] = ["i1", "i2"];
    const IDS: [&str; 10] = [
        "a",
        "b",
        "user-1",
        "user-10",
        "é",
        "with space",
        "quo\"te",
        "#x: y",
        "\u{2028}",
        "- item",
    ];

    fn sources(vault: String) -> Sources {
        Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault,
        }
    }

    fn opts(key: Option<&Arc<EncryptionKey>>) -> BuildOptions {
        BuildOptions {
            encryption_key: key.cloned(),
            ..BuildOptions::default()
        }
    }

    fn start() -> Snapshot {
        let vault = "integrations:\n  - {unique_key: i1, provider: hdr}\n  - {unique_key: i2, provider: basic}\nconnections:\n  - {connection_id: a, provider_config_key: i1, credentials: {type: API_KEY, apiKey: first}}\n  - {connection_id: b, provider_config_key: i2, credentials: {type: BASIC, username: u, password: p}}\n";
        match snapshot::build(&sources(vault.into()), &BuildOptions::default()) {
            Ok(s) => s,
            Err(d) => panic!("{d:?}"),
        }
    }

    /// One change of a generated group (indices into [`INTS`] and [`IDS`]).
    #[derive(Debug, Clone)]
    enum Step {
        Put(usize, usize, String, Option<String>),
        Delete(usize, usize),
        /// Re-put an integration as it is (a group that renders everything).
        PutIntegration(usize),
    }

    fn change(snap: &Snapshot, step: &Step) -> Change {
        match step {
            Step::Put(i, c, secret, meta) => {
                let credentials = if *i == 0 {
                    RawCredentials::ApiKey {
                        api_key: Secret::new(secret.as_str()),
                    }
                } else {
                    RawCredentials::Basic {
                        username: Secret::new("user"),
                        password: Secret::new(secret.as_str()),
                    }
                };
                let mut metadata = Map::new();
                if let Some(m) = meta {
                    metadata.insert("note".into(), Value::String(m.clone()));
                }
                Change::PutConnection(
                    RawConnection {
                        connection_id: IDS[*c].into(),
                        provider_config_key: INTS[*i].into(),
                        credentials,
                        connection_config: Map::new(),
                        metadata,
                        end_user: None,
                        tags: Map::new(),
                        webhook_url_override: None,
                        created_at: None,
                        updated_at: None,
                    },
                    7,
                )
            }
            Step::Delete(i, c) => Change::DeleteConnection {
                provider_config_key: INTS[*i].into(),
                connection_id: IDS[*c].into(),
            },
            Step::PutIntegration(i) => {
                let rec: RawIntegration = match snap.integrations.get(INTS[*i]) {
                    Some(int) => int.record.clone(),
                    None => panic!("integration {i}"),
                };
                Change::PutIntegration(rec)
            }
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..2usize, 0..IDS.len(), ".{0,40}", prop::option::of(".{0,300}"))
                .prop_map(|(i, c, s, m)| Step::Put(i, c, s, m)),
            3 => (0..2usize, 0..IDS.len()).prop_map(|(i, c)| Step::Delete(i, c)),
            1 => (0..2usize).prop_map(Step::PutIntegration),
        ]
    }

    /// The records a file holds, connections in the snapshot's order, plaintext.
    fn read_back(text: &str, key: Option<&EncryptionKey>) -> RawVault {
        let mut v = match crate::config::vault::parse("vault.yaml", text) {
            Ok(v) => v,
            Err(d) => panic!("{d}\n---\n{text}"),
        };
        if let Err(e) = crate::config::sealed::open_vault(&mut v, key) {
            panic!("{e:?}");
        }
        v.secret_keys.clear();
        v.connections.sort_by(|a, b| {
            (&a.provider_config_key, &a.connection_id)
                .cmp(&(&b.provider_config_key, &b.connection_id))
        });
        v
    }

    /// Runs `groups` through a splicer (keeping `mask` bits of its hashes): after every commit
    /// the file reads back as the snapshot's records, and loads as a vault. How many commits
    /// were spliced.
    fn run(groups: &[Vec<Step>], mask: u64, key: Option<Arc<EncryptionKey>>) -> usize {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.yaml");
        std::fs::write(&path, "# kept\n").expect("seed");
        let mut splicer = Splicer {
            mask,
            ..Splicer::new()
        };
        let mut snap = start();
        let mut spliced = 0;
        for group in groups {
            let mut changes = Vec::new();
            let mut next = snap.clone();
            for s in group {
                let ch = change(&next, s);
                // A change the state refuses is refused alone, as by the writer.
                if let Ok(n) = next.with(ch.clone()) {
                    next = n;
                    changes.push(ch);
                }
            }
            next.generation = snap.generation + 1;
            let (stamp, how) = splicer
                .write(&path, "# kept\n", &next, &changes, key.as_deref())
                .expect("writes");
            if matches!(how, Written::Spliced { .. }) {
                spliced += 1;
            }
            assert_eq!(FileStamp::read(&path), Some(stamp));
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(text.starts_with("# kept\n"), "{text}");
            let back = read_back(&text, key.as_deref());
            assert_eq!(back, next.records(), "after {how:?}:\n{text}");
            // What `sidekey check` and the reloader do with it: a whole build.
            let built = snapshot::build(&sources(text.clone()), &opts(key.as_ref()));
            match built {
                Ok(b) => assert_eq!(b.connection_count(), next.connection_count()),
                Err(d) => panic!("{d:?}\n---\n{text}"),
            }
            snap = next;
        }
        spliced
    }

    fn key() -> Arc<EncryptionKey> {
        Arc::new(EncryptionKey::parse(&"A".repeat(43)).expect("key"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Group commits written incrementally give the records of the final snapshot, with
        /// full hashes and with a few bits of them (collisions, which must render everything).
        #[test]
        fn spliced_commits_read_back_as_the_snapshot(
            groups in prop::collection::vec(prop::collection::vec(step(), 1..6), 1..10),
            mask in prop_oneof![Just(!0u64), Just(0xff), Just(0x7)],
            sealed in any::<bool>(),
        ) {
            run(&groups, mask, sealed.then(key));
        }
    }

    #[test]
    fn later_commits_are_spliced_and_keep_sealed_bytes() {
        let groups = vec![
            vec![Step::Put(0, 2, "s1".into(), None)],
            vec![Step::Put(0, 3, "s2".into(), Some("m".into()))],
            vec![Step::Put(0, 2, "s3".into(), None), Step::Delete(1, 1)],
            vec![Step::PutIntegration(0)],
            vec![Step::Put(1, 4, "s4".into(), None)],
        ];
        // The first commit and the integration's render everything; the other three splice.
        assert_eq!(run(&groups, !0, None), 3);
        assert_eq!(run(&groups, !0, Some(key())), 3);

        // A sealed connection nobody changed keeps its bytes (its nonce) across a splice.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.yaml");
        let k = key();
        let mut splicer = Splicer::new();
        let mut snap = start();
        snap.generation = 1;
        splicer
            .write(&path, "", &snap, &[], Some(&k))
            .expect("full");
        let before = std::fs::read_to_string(&path).expect("read");
        let ch = change(&snap, &Step::Put(0, 5, "new".into(), None));
        let mut next = snap.with(ch.clone()).expect("put");
        next.generation = 2;
        let (_, how) = splicer
            .write(&path, "", &next, &[ch], Some(&k))
            .expect("splice");
        assert!(
            matches!(how, Written::Spliced { rendered: 1, .. }),
            "{how:?}"
        );
        let after = std::fs::read_to_string(&path).expect("read");
        assert!(
            after.starts_with(&before),
            "unchanged items copied:\n{before}\n---\n{after}"
        );
    }

    #[test]
    fn a_file_changed_behind_the_index_is_never_copied_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vault.yaml");
        let mut splicer = Splicer::new();
        let mut snap = start();
        snap.generation = 1;
        splicer.write(&path, "", &snap, &[], None).expect("full");
        // A hand edit that moves every offset after it (the file store re-reads it first; the
        // snapshot here is what it would have published, without the edit's new connection,
        // so a copy from stale offsets would show).
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replacen("\"first\"", "\"a much longer key by hand\"", 1);
        assert_ne!(text, edited);
        std::fs::write(&path, &edited).expect("edit");
        let ch = change(&snap, &Step::Put(1, 3, "x".into(), None));
        let mut next = snap.with(ch.clone()).expect("put");
        next.generation = 2;
        let (_, how) = splicer.write(&path, "", &next, &[ch], None).expect("write");
        assert_eq!(how, Written::Full);
        let back = read_back(&std::fs::read_to_string(&path).expect("read"), None);
        assert_eq!(back, next.records());

        // A snapshot that is not the next generation renders everything too.
        let ch = change(&next, &Step::Put(1, 4, "y".into(), None));
        let mut later = next.with(ch.clone()).expect("put");
        later.generation = 5;
        let (_, how) = splicer
            .write(&path, "", &later, &[ch], None)
            .expect("write");
        assert_eq!(how, Written::Full);
    }
}
