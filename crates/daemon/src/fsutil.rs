//! Files the daemon owns: definitions written atomically, bounded reads, private dirs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content:
/// a temporary file in the same directory, fsync, rename over `path`, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or unlink in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `path` (and makes that durable); a missing file is not an error.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a text file of at most `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let f = File::open(path)?;
    let mut s = String::new();
    f.take(max + 1).read_to_string(&mut s)?;
    if s.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(s)
}

/// Creates `dir` and its parents; new directories get `mode`.
pub fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// The last non-empty line of a (log) file, for error messages.
pub fn last_line(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut f = f;
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_bounds_reads() {
        let dir = std::env::temp_dir().join(format!("vireod-fsutil-{}", std::process::id()));
        create_dir(&dir, 0o700).unwrap();
        let p = dir.join("a.xml");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two\nthree\n\n").unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap(), "two\nthree\n\n");
        assert!(read_bounded(&p, 3).is_err());
        assert_eq!(last_line(&p).as_deref(), Some("three"));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        remove_durably(&p).unwrap();
        remove_durably(&p).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
