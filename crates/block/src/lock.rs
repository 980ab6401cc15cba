//! Image locking between processes: a VM's disk must not be written by a second VM (or
//! `qemu-img`) at the same time, and an image read by a VM (a read-only disk, a backing
//! file) must not be written under it.
//!
//! Open-file-description locks (`F_OFD_SETLK`) on single bytes, in the byte layout QEMU
//! uses, so vireo and QEMU see each other's locks: for each permission bit `p` a holder
//! locks byte `100 + p` ("I use p") and byte `200 + p` ("nobody else may use p"), always
//! as shared (read) locks; a conflict is another description holding a byte we must not
//! see held (`F_OFD_GETLK` with an exclusive request). Permission bits (QEMU's
//! BLK_PERM_* values): 0 consistent read, 1 write. A writer uses both and shares reading
//! only (bytes 100, 101, 201 — what a QEMU VM with a read-write disk holds); a reader
//! uses reading and lets nobody write (bytes 100, 201 — a QEMU read-only disk).
//!
//! The locks live on a descriptor of their own and go away when the [`ImageLock`] is
//! dropped (or the process dies: the kernel drops OFD locks with the last descriptor).
//! OFD locks are per open file description, so the same image attached twice to one VM
//! conflicts with itself too.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const PERM_CONSISTENT_READ: u32 = 0;
const PERM_WRITE: u32 = 1;

/// Held locks on one image file.
#[derive(Debug)]
pub struct ImageLock {
    _file: File,
    path: PathBuf,
}

impl ImageLock {
    /// Locks `path` for a writer (`write`: reads and writes; shares reading only) or for
    /// a reader (reads; lets nobody write). Fails with
    /// [`Error::Locked`] when another holder's locks conflict.
    pub fn acquire(path: &Path, write: bool) -> Result<ImageLock> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let (used, unshared): (&[u32], &[u32]) = if write {
            (&[PERM_CONSISTENT_READ, PERM_WRITE], &[PERM_WRITE])
        } else {
            (&[PERM_CONSISTENT_READ], &[PERM_WRITE])
        };
        // Take ours first, then look for others': two racing openers may both fail, but
        // never both succeed.
        for &p in used {
            set_shared(&file, PERM_BASE + i64::from(p)).map_err(|e| Error::io(path, "lock", e))?;
        }
        for &p in unshared {
            set_shared(&file, SHARED_BASE + i64::from(p))
                .map_err(|e| Error::io(path, "lock", e))?;
        }
        // Someone forbids what we use, or uses what we forbid.
        let conflicts = used
            .iter()
            .map(|&p| SHARED_BASE + i64::from(p))
            .chain(unshared.iter().map(|&p| PERM_BASE + i64::from(p)));
        for byte in conflicts {
            if held_by_other(&file, byte).map_err(|e| Error::io(path, "lock", e))? {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    what: if write {
                        "another process (a VM, qemu or qemu-img) has it open"
                    } else {
                        "another process (a VM, qemu or qemu-img) is writing it"
                    },
                });
            }
        }
        Ok(ImageLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn flock(kind: i32, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value (l_pid must be 0 for
    // OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl
}

fn set_shared(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    // SAFETY: fcntl reads the flock struct we pass by pointer, valid for the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn held_by_other(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: fcntl writes into the flock struct we pass by pointer, valid for the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vireo-lock-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("disk.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        (dir, p)
    }

    #[test]
    fn writers_exclude_each_other_and_readers() {
        let (dir, p) = image("w");
        let w = ImageLock::acquire(&p, true).unwrap();
        let e = ImageLock::acquire(&p, true).unwrap_err().to_string();
        assert!(e.contains("is locked") && e.contains("has it open"), "{e}");
        let e = ImageLock::acquire(&p, false).unwrap_err().to_string();
        assert!(e.contains("writing"), "{e}");
        drop(w);
        // Readers share; a reader keeps writers out.
        let r1 = ImageLock::acquire(&p, false).unwrap();
        let r2 = ImageLock::acquire(&p, false).unwrap();
        let e = ImageLock::acquire(&p, true).unwrap_err().to_string();
        assert!(e.contains("is locked"), "{e}");
        drop((r1, r2));
        ImageLock::acquire(&p, true).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// QEMU's tools see vireo's locks and vireo sees theirs (skipped without qemu-utils).
    #[test]
    fn qemu_and_vireo_see_each_others_locks() {
        use std::process::{Command, Stdio};
        if Command::new("qemu-io").arg("--version").output().is_err() {
            eprintln!("skipped: qemu-io not installed (apt-get install qemu-utils)");
            return;
        }
        let (dir, p) = image("qemu");
        let qemu_write = || {
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", "write 0 512"])
                .arg(&p)
                .output()
                .unwrap()
        };
        let w = ImageLock::acquire(&p, true).unwrap();
        let out = qemu_write();
        assert!(!out.status.success());
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains("lock"), "{msg}");
        drop(w);
        let r = ImageLock::acquire(&p, false).unwrap();
        assert!(
            !qemu_write().status.success(),
            "a reader keeps qemu from writing"
        );
        drop(r);
        assert!(qemu_write().status.success());

        // qemu-io holding the image open for writing.
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "sleep 60000"])
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait (bounded) until it has opened the image and taken its locks.
        let mut err = None;
        for _ in 0..1000 {
            match ImageLock::acquire(&p, false) {
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
                Ok(l) => drop(l),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let e = ImageLock::acquire(&p, true)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let _ = child.kill();
        let _ = child.wait();
        assert!(err.unwrap_or_default().contains("is writing it"));
        assert!(e.contains("has it open"), "{e}");
        ImageLock::acquire(&p, true).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
