//! `--exit-file`: how the VMM ended, written atomically just before it exits, so that a
//! daemon that was not running at that moment still learns why (docs/vmm-api.md).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::ShutdownReason;

/// The exit file's content: `{"status": N, "reason": "...", "detail": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The process exit status.
    pub status: i32,
    /// poweroff, reset, guest-failure, quit, signal or error.
    pub reason: String,
    /// A human-readable explanation (for guest failures, with the register dump).
    pub detail: String,
}

impl ExitReport {
    pub fn new(status: i32, reason: ShutdownReason, detail: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.as_str().to_string(),
            detail: detail.into(),
        }
    }

    /// Writes the report to `path` atomically (see [`write_atomic`]).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut json = serde_json::to_vec(self).map_err(io::Error::other)?;
        json.push(b'\n');
        write_atomic(path, &json)
    }
}

/// Replaces `path` with `bytes` so that a reader sees the old file or the complete new
/// one, even across a crash: a temporary file in the same directory, fsync, rename over
/// `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
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
    fn written_atomically_and_readable_back() {
        let dir = std::env::temp_dir().join(format!("vireo-exit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.exit");
        std::fs::write(&path, b"old").unwrap();
        let r = ExitReport::new(130, ShutdownReason::Signal, "SIGINT");
        r.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"status\":130,\"reason\":\"signal\",\"detail\":\"SIGINT\"}\n"
        );
        let back: ExitReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let e = r.write(&dir.join("missing/vm.exit")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
