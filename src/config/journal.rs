//! The vault's journal: API writes of connections, appended beside the vault until they are
//! folded into it.
//!
//! Rewriting the whole vault on every group commit (1.86 MB copied and fsynced at 10k
//! connections, 60–100 times a second under 500 writes/s) cost the proxy's p99 on the same
//! core (issue 12, BENCHMARKS.md). So a group commit that only puts or deletes connections
//! appends one line to `<vault>.journal` and `fdatasync`s it: a few kilobytes, durable before
//! any writer is answered. The file store folds the journal into the vault (rewrites the vault
//! with it applied, then empties the journal) when writes go idle, when the journal grows past
//! a fraction of the vault, and on any commit that changes integrations or caller keys.
//!
//! This module is the format and the read side, here beside the other readers of the vault so
//! that every one of them (first load, reload, `sidekey check`, `store import`, the file
//! store's re-read after a hand edit) sees vault + journal through [`build`]. The writer is
//! [`crate::store::file`].
//!
//! **Format.** One line per group commit, JSON: `{"ops":[{"put":{…connection…}},
//! {"delete":{"provider_config_key":…,"connection_id":…}}]}` then `\n`. A connection is the
//! vault's record (`RawConnection`), its secrets sealed as in the vault when
//! `SIDEKEY_ENCRYPTION_KEY` is set, so the journal never holds more plaintext than the vault
//! would. A group is one line so that it applies whole or not at all: a crash in the middle
//! of an append leaves a last line without its `\n` (or one that does not parse), which was
//! never acknowledged and is ignored. Any other line that does not parse is an error: the
//! journal is damaged, and sidekey refuses to guess.
//!
//! **Replay** applies each operation to the snapshot built from the vault with
//! [`Snapshot::with`], in order. Puts replace, deletes of an absent connection do nothing, so
//! replaying a journal whose vault already holds it (a crash between folding and emptying
//! it) gives the same records. A hand edit of the vault while the journal holds writes keeps
//! those writes: they are applied over the edited file (the rule: the API write is
//! not lost); one that no longer applies (its integration was removed by hand) refuses the
//! load with the journal's line and the connection named, and the last good snapshot serves.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sealed::{self, EncryptionKey, Opener, SealError};
use super::snapshot::{BuildOptions, Change, Snapshot};
use super::vault::RawConnection;
use super::{Diagnostic, Sources};

/// One operation of a group, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Put(Box<RawConnection>),
    Delete {
        provider_config_key: String,
        connection_id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    ops: Vec<Op>,
}

/// The journal of the vault at `vault`: `<vault>.journal` beside the file the vault resolves
/// to (a symlinked vault is written through to its target, and so is its journal).
pub fn path(vault: &Path) -> PathBuf {
    let target = std::fs::canonicalize(vault).unwrap_or_else(|_| vault.to_path_buf());
    let mut name = target.clone().into_os_string();
    name.push(".journal");
    PathBuf::from(name)
}

/// Why a group could not be put in words for the journal (never a secret in the message).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot seal the journal: {0}")]
    Seal(#[from] SealError),
    #[error("cannot encode the journal: {0}")]
    Json(#[from] serde_json::Error),
}

/// The line to append for a group's `changes`, secrets sealed with `key`; `None` when the
/// group changes something other than connections (integrations, caller keys), which the
/// journal does not hold: such a commit rewrites the vault.
pub fn encode(
    changes: &[Change],
    key: Option<&EncryptionKey>,
) -> Result<Option<Vec<u8>>, EncodeError> {
    let mut ops = Vec::with_capacity(changes.len());
    for ch in changes {
        match ch {
            Change::PutConnection(raw, _) => {
                let mut raw = raw.clone();
                if let Some(key) = key {
                    sealed::seal_connection(&mut raw, key)?;
                }
                ops.push(Op::Put(Box::new(raw)));
            }
            Change::DeleteConnection {
                provider_config_key,
                connection_id,
            } => ops.push(Op::Delete {
                provider_config_key: provider_config_key.clone(),
                connection_id: connection_id.clone(),
            }),
            Change::PutIntegration(_)
            | Change::DeleteIntegration(_)
            | Change::PutKey(_)
            | Change::DeleteKey(_) => return Ok(None),
        }
    }
    let mut line = serde_json::to_vec(&Group { ops })?;
    line.push(b'\n');
    Ok(Some(line))
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Read {
    /// The groups' operations, in order, each with the 1-based line it came from.
    pub ops: Vec<(usize, Op)>,
    /// Bytes of the journal that hold whole groups (where the next append belongs).
    pub good_bytes: u64,
    /// A last line cut short by a crash (never acknowledged): ignored.
    pub torn_tail: bool,
}

/// Reads the journal of `vault`; an absent journal is an empty one. `file` names it in
/// diagnostics.
pub fn read(vault: &Path) -> Result<Read, Diagnostic> {
    let p = path(vault);
    let name = p.display().to_string();
    let text = match super::limits::read_file_if_exists(&p) {
        Ok(Some(f)) => f.text,
        Ok(None) => return Ok(Read::default()),
        Err(e) => return Err(Diagnostic::error(&name, "", e.to_string())),
    };
    parse(&name, &text)
}

fn parse(name: &str, text: &str) -> Result<Read, Diagnostic> {
    let mut out = Read::default();
    let mut rest = text;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let Some(end) = rest.find('\n') else {
            // No newline: the append of this group did not finish.
            out.torn_tail = true;
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        match serde_json::from_str::<Group>(line) {
            Ok(g) => {
                out.ops.extend(g.ops.into_iter().map(|op| (line_no, op)));
                out.good_bytes += end as u64 + 1;
            }
            // The last line, whole but unreadable: a torn append whose tail happened to be
            // a newline is not possible (one write of the whole line), but zeroes or a cut
            // after a crash are; it was never acknowledged either way.
            Err(_) if rest.is_empty() => {
                out.torn_tail = true;
                break;
            }
            // serde_json's message names the position, never the value.
            Err(e) => {
                return Err(Diagnostic::error(
                    name,
                    format!("line {line_no}"),
                    format!(
                    "the journal is damaged ({e}); the vault without it is the last folded state"
                ),
                ))
            }
        }
    }
    Ok(out)
}

/// Applies a journal's operations to `snap` (built from the vault), opening sealed secrets
/// with `opts`' key. A put keeps the version `previous` has for an identical record, as a
/// rebuild of the vault does; otherwise it takes the next one.
pub fn replay(
    mut snap: Snapshot,
    read: Read,
    name: &str,
    opts: &BuildOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut opener = Opener::new(opts.encryption_key.as_deref());
    for (i, (line, op)) in read.ops.into_iter().enumerate() {
        let change = match op {
            Op::Put(raw) => {
                let mut raw = *raw;
                let at = format!("line {line}: connections[{}]", raw.connection_id);
                opener
                    .connection(i, &mut raw)
                    .map_err(|e| vec![Diagnostic::error(name, at.clone(), e.reason.to_string())])?;
                let kept = previous
                    .and_then(|p| p.connection(&raw.provider_config_key, &raw.connection_id))
                    .filter(|c| c.record() == raw)
                    .map(|c| c.version);
                let version =
                    kept.unwrap_or_else(|| opts.versions.as_ref().map_or(0, |v| v.next()));
                let change = Change::PutConnection(raw, version);
                snap = snap.with(change).map_err(|ds| {
                    ds.into_iter()
                        .map(|d| Diagnostic {
                            file: name.to_string(),
                            path: if d.path.is_empty() {
                                at.clone()
                            } else {
                                format!("{at}.{}", d.path)
                            },
                            ..d
                        })
                        .collect::<Vec<_>>()
                })?;
                continue;
            }
            Op::Delete {
                provider_config_key,
                connection_id,
            } => Change::DeleteConnection {
                provider_config_key,
                connection_id,
            },
        };
        snap = snap.with(change)?;
    }
    Ok(snap)
}

/// Builds the snapshot of `src` (as [`super::snapshot::build_reusing`]) and applies the
/// journal beside `vault`: what every reader of the vault calls.
pub fn build(
    src: &Sources,
    vault: &Path,
    opts: &BuildOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let journal = read(vault).map_err(|d| vec![d])?;
    let snap = super::snapshot::build_reusing(src, opts, previous)?;
    if journal.torn_tail {
        tracing::warn!(
            journal = %path(vault).display(),
            "the vault's journal ends in a group cut short (a crash while it was appended, never acknowledged): ignored"
        );
    }
    if journal.ops.is_empty() {
        return Ok(snap);
    }
    let name = path(vault).display().to_string();
    replay(snap, journal, &name, opts, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_ignored_and_a_damaged_middle_is_an_error() {
        let good =
            "{\"ops\":[{\"delete\":{\"provider_config_key\":\"a\",\"connection_id\":\"b\"}}]}\n";
        let r = parse("j", &format!("{good}{good}{{\"ops\":[{{\"del")).expect("torn tail");
        assert_eq!(r.ops.len(), 2);
        assert!(r.torn_tail);
        assert_eq!(r.good_bytes, 2 * good.len() as u64);
        let r = parse("j", &format!("{good}\0\0\0\n")).expect("zeroes at the end");
        assert_eq!(r.ops.len(), 1);
        assert!(r.torn_tail);
        let e = parse("j", &format!("{good}garbage\n{good}")).expect_err("damaged");
        assert_eq!(e.path, "line 2");
        let r = parse("j", "").expect("empty");
        assert!(r.ops.is_empty() && !r.torn_tail);
    }
}
