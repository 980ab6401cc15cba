//! The single-instance lock: a pid file held with `flock` for the daemon's lifetime, so
//! two daemons never serve one set of directories. The kernel drops the lock when the
//! process dies (even by SIGKILL), so a stale pid file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub struct PidLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another vireod (pid {pid}) is already running with {}", path.display())]
    Held {
        pid: String,
        path: std::path::PathBuf,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

impl PidLock {
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(LockError::Held {
                    pid: pid.trim().to_string(),
                    path: path.to_path_buf(),
                });
            }
            return Err(io_err(e));
        }
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        })()
        .map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let p = std::env::temp_dir().join(format!("vireod-lock-{}", std::process::id()));
        let held = PidLock::acquire(&p).unwrap();
        let e = PidLock::acquire(&p).err().unwrap();
        assert!(
            e.to_string()
                .contains(&format!("another vireod (pid {})", std::process::id())),
            "{e}"
        );
        drop(held);
        let again = PidLock::acquire(&p).unwrap();
        drop(again);
        std::fs::remove_file(&p).unwrap();
    }
}
