//! Input limits for every configuration file (providers.yaml, the vault, the `--state` file) and
//! the constants later JSON inputs reuse: how files are opened, how large they may be, and a
//! linear pre-scan of YAML text that refuses what would make the parser slow before
//! the YAML parser (serde_yaml_ng, or the vault's streaming `config::yaml_de`, which applies
//! the same libyaml scanner) sees it.
//!
//! Why a pre-scan: serde_yaml_ng bounds *deserialization* (a recursion limit of 128, and alias
//! replays to 100 per event), but it first loads every event of the document through the libyaml
//! port, and that scanner re-checks every open flow level for stale simple keys on each token.
//! Flow nesting therefore costs O(depth × tokens): 100 000 `[` or `{a: ` ran past 30 s. Alias
//! replays are bounded in count, not in size: 10 000 aliases of a 10 000-item list replay 10⁸
//! events. So [`check_yaml`] walks the text once, with libyaml's own tokenizing rules (quoted,
//! plain and block scalars, comments, the block indentation stack), and refuses:
//!
//! - nesting deeper than [`MAX_DEPTH`] (flow brackets plus block indentation levels);
//! - more than [`MAX_ALIASES`] aliases, or aliases that together stand for more than
//!   [`MAX_ALIAS_EXPANSION`] bytes of text (an anchored node's size is measured generously: a
//!   block node runs until the indentation falls below its key).
//!
//! The scan follows libyaml token by token, so brackets inside quoted scalars, block scalars and
//! comments do not count and cannot hide real ones. Where it cannot be sure (a block scalar
//! whose indentation it would have to guess), it errs towards counting; where libyaml would stop
//! with a syntax error, the scan stops too and lets serde_yaml_ng report it. A weird but valid
//! file may be refused; a dangerous one is not accepted.
//!
//! Files are opened with `O_NONBLOCK` and checked with `fstat` on the opened descriptor (no
//! race between check and read): only regular files are read, so a FIFO nobody writes, a device
//! or a directory is refused at once instead of blocking. A file larger than [`MAX_FILE_BYTES`]
//! is refused before it is read.
//!
//! JSON (API bodies, added later): serde_json refuses nesting deeper than 128 by itself and has
//! no aliases, so JSON needs only a size cap; use [`MAX_DEPTH`] where a JSON body is walked by
//! hand, and [`MAX_FILE_BYTES`] or a smaller, request-specific cap for bodies.

use std::io::Read as _;
use std::path::Path;
use std::time::SystemTime;

mod yaml;

pub use yaml::{check_yaml, Refused};

/// The largest configuration file read: a 100 000-connection vault is about 18 MiB.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The deepest nesting accepted (flow collections plus block indentation levels). A vault needs
/// 4 plus whatever its `metadata` holds.
pub const MAX_DEPTH: usize = 64;

/// The most aliases (`*name`) one file may use.
pub const MAX_ALIASES: usize = 100_000;

/// How many bytes of text all aliases of one file may stand for together.
pub const MAX_ALIAS_EXPANSION: usize = 16 << 20;

/// A configuration file read under the limits.
#[derive(Debug)]
pub struct FileText {
    pub text: String,
    /// The file's modification time, from the same `fstat` that checked it.
    pub modified: Option<SystemTime>,
}

/// Why a configuration file was not read. Its Display is the message of a `FILE: message`
/// diagnostic (every variant starts "cannot read:").
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read: not a regular file ({0}); configuration files must be regular files")]
    NotAFile(&'static str),
    #[error("cannot read: {size} bytes is more than the limit of {} MiB", .max >> 20)]
    TooLarge { size: u64, max: u64 },
    /// The file grew past the cap after it was checked.
    #[error("cannot read: more than the limit of {} MiB", .max >> 20)]
    Grew { max: u64 },
    #[error("cannot read: not UTF-8 text (at byte {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
}

/// Reads a configuration file: regular files only, at most [`MAX_FILE_BYTES`], UTF-8.
pub fn read_file(path: &Path) -> Result<FileText, ReadError> {
    read_file_limited(path, MAX_FILE_BYTES)
}

/// [`read_file`], with `None` for a file that does not exist (the `--state` file before the
/// first write).
pub fn read_file_if_exists(path: &Path) -> Result<Option<FileText>, ReadError> {
    match open_nonblocking(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => read_file(path).map(Some),
    }
}

/// [`read_file`] with another size cap (for tests).
pub fn read_file_limited(path: &Path, max: u64) -> Result<FileText, ReadError> {
    let mut file = open_nonblocking(path)?;
    // fstat on the descriptor we read from: what was checked is what is read.
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotAFile(kind(&meta.file_type())));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the fstat: never read more than the cap.
    file.by_ref().take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::Grew { max });
    }
    let text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    Ok(FileText {
        text,
        modified: meta.modified().ok(),
    })
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Whether YAML text holds nothing: only whitespace, comments and document markers. An editor
/// mid-save leaves such a file behind.
pub fn is_blank(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_files() {
        for t in ["", "  \n", "# c\n\n  # d\n", "---\n", "\u{feff}\n"] {
            assert!(is_blank(t), "{t:?}");
        }
        for t in ["a: 1", "# c\nx\n", "[]"] {
            assert!(!is_blank(t), "{t:?}");
        }
    }
}
