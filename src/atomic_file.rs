//! Crash-safe file writes: a temporary file beside the target, fsync, rename, fsync the
//! directory. A reader (or a crash) sees the old file or the new one, never a torn mix.

use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` atomically with the given Unix permission bits.
pub fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_with(path, mode, |w| w.write_all(data)).map(|_| ())
}

/// Who a file is: device, inode, size and modification time. sidekey replaces the vault by
/// rename, so each of its writes makes a new inode; an editor's rename-on-save does too, and an
/// in-place edit moves the size or the modification time (the inode's change time is left
/// out because the rename itself moves it). Equal stamps are how the file store and the
/// reloader know the vault is still the file sidekey wrote without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<std::time::SystemTime>,
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Self {
            dev,
            ino,
            len: m.len(),
            mtime: m.modified().ok(),
        }
    }

    /// The stamp of the file `path` names (through symlinks), if it can be stat'ed.
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// [`write`], with the content produced by `fill` into a buffered writer over the temporary
/// file (so a large file is never built in memory first). Returns the stamp of the file as
/// written, taken from its descriptor before the rename, so that no later change to `path`
/// can be mistaken for it.
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<FileStamp> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp)?;
        {
            let mut w = std::io::BufWriter::with_capacity(256 << 10, &mut f);
            fill(&mut w)?;
            w.flush()?;
        }
        f.sync_all()?;
        let stamp = FileStamp::of(&f.metadata()?);
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(stamp)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("v.yaml");
        write(&p, b"one", 0o600).expect("write");
        write(&p, b"two", 0o600).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temp file left behind");
    }

    #[test]
    fn the_stamp_is_the_written_file_and_moves_with_any_edit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("v.yaml");
        let stamp = write_with(&p, 0o600, |w| w.write_all(b"one")).expect("write");
        assert_eq!(
            FileStamp::read(&p),
            Some(stamp),
            "the file at the path is the one written"
        );
        let again = write_with(&p, 0o600, |w| w.write_all(b"one")).expect("write");
        assert_ne!(
            again, stamp,
            "every write is a new inode, same content or not"
        );
        // An in-place edit of the same length keeps the inode; its modification time moves.
        std::fs::write(&p, b"two").expect("edit");
        let f = std::fs::File::options().write(true).open(&p).expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("mtime");
        assert_ne!(FileStamp::read(&p), Some(again));
        // A failed fill leaves the old file and no temporary behind.
        let err = write_with(&p, 0o600, |_| Err(std::io::Error::other("boom")));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
