//! Thin wrapper over a host file: positioned I/O with errors that name the
//! file, hole punching and SEEK_DATA/SEEK_HOLE.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Alignment of buffer address, length and file offset for O_DIRECT I/O.
pub const DIRECT_ALIGN: usize = 4096;

#[derive(Debug)]
pub struct HostFile {
    file: File,
    /// A second descriptor with O_DIRECT (`OpenOptions::direct`), used for
    /// reads and writes whose buffer, length and offset are DIRECT_ALIGN
    /// aligned; everything else (metadata, unaligned requests) goes through
    /// the page cache. The kernel keeps the two coherent (a direct read
    /// writes back dirty cached pages of its range first; a direct write
    /// invalidates them).
    direct: Option<File>,
    path: PathBuf,
    read_only: bool,
}

fn aligned(ptr: *const u8, len: usize, offset: u64) -> bool {
    (ptr as usize | len | offset as usize) % DIRECT_ALIGN == 0
}

impl HostFile {
    pub fn open(path: &Path, read_only: bool) -> Result<HostFile> {
        Self::open_with(path, read_only, false)
    }

    /// `direct`: also open the file with O_DIRECT for aligned data I/O
    /// (silently not used where the file system refuses O_DIRECT).
    pub fn open_with(path: &Path, read_only: bool, direct: bool) -> Result<HostFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::io(path, "open", e))?;
        let direct = if direct {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    log::debug!("{}: O_DIRECT not available: {e}", path.display());
                    None
                }
            }
        } else {
            None
        };
        Ok(HostFile {
            file,
            direct,
            path: path.to_path_buf(),
            read_only,
        })
    }

    /// The descriptor for data I/O on `len` bytes at `ptr` / `offset`.
    fn data_fd(&self, ptr: *const u8, len: usize, offset: u64) -> &File {
        match &self.direct {
            Some(d) if aligned(ptr, len, offset) => d,
            _ => &self.file,
        }
    }

    pub fn create(path: &Path) -> Result<HostFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path, "create", e))?;
        Ok(HostFile {
            file,
            direct: None,
            path: path.to_path_buf(),
            read_only: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Size in bytes; for a block device (whose stat size is 0) the device's size.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Result<u64> {
        use std::os::unix::fs::FileTypeExt;
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?;
        if meta.file_type().is_block_device() {
            // Every I/O here is positional (pread/pwrite), so moving the offset is harmless.
            use std::io::{Seek, SeekFrom};
            return (&self.file)
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(&self.path, "seek", e));
        }
        Ok(meta.len())
    }

    /// Bytes allocated on the host file system.
    pub fn allocated(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// Reads exactly `buf.len()` bytes; bytes beyond end of file read as zero.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let at = offset + done as u64;
            let n = self
                .data_fd(rest.as_ptr(), rest.len(), at)
                .read_at(rest, at)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, failing if the file is too short.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::field(
                    &self.path,
                    what,
                    format!(
                        "{} bytes at offset {offset} lie beyond the end of the file",
                        buf.len()
                    ),
                )
            } else {
                Error::io(&self.path, "read", e)
            }
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        #[cfg(test)]
        journal::record(&self.path, journal::Op::Write(offset, buf.to_vec()));
        self.data_fd(buf.as_ptr(), buf.len(), offset)
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.path, "write", e))
    }

    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        #[cfg(test)]
        journal::record(&self.path, journal::Op::Sync);
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, "fsync", e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        #[cfg(test)]
        journal::record(&self.path, journal::Op::SetLen(len));
        self.file
            .set_len(len)
            .map_err(|e| Error::io(&self.path, "truncate", e))
    }

    /// Deallocates the range (reads back as zeroes). Falls back to writing
    /// zeroes where the file system cannot punch holes.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate only operates on the file descriptor we own; no
        // memory is passed to the kernel.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => self.write_zeroes(offset, len),
            _ => Err(Error::io(&self.path, "fallocate(PUNCH_HOLE)", err)),
        }
    }

    pub fn write_zeroes(&self, mut offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let zeroes = vec![0u8; (len.min(1 << 20)) as usize];
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.write_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// `lseek(SEEK_DATA / SEEK_HOLE)`: returns `(is_data, end)` for the
    /// region starting at `offset`, `end` clamped to `limit`.
    pub fn seek_status(&self, offset: u64, limit: u64) -> (bool, u64) {
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek takes no memory arguments; fd is valid for `self`.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after offset (hole up to EOF) or unsupported.
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return (false, limit);
            }
            return (true, limit);
        }
        let data = data as u64;
        if data > offset {
            return (false, data.min(limit));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return (true, limit);
        }
        (true, (hole as u64).min(limit).max(offset + 1).min(limit))
    }
}

/// Test-only journal of every modification of one file, used to replay
/// simulated power failures (see `qcow2::tests::power_failure_*`).
#[cfg(test)]
pub(crate) mod journal {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    #[derive(Debug, Clone)]
    pub enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
    }

    type Log = Option<(PathBuf, Vec<Op>)>;
    static LOG: Mutex<Log> = Mutex::new(None);

    pub fn start(p: &Path) {
        if let Ok(mut l) = LOG.lock() {
            *l = Some((p.to_path_buf(), Vec::new()));
        }
    }

    pub fn len() -> usize {
        LOG.lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(_, v)| v.len()))
            .unwrap_or(0)
    }

    pub fn stop() -> Vec<Op> {
        LOG.lock()
            .ok()
            .and_then(|mut l| l.take())
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    pub fn record(p: &Path, op: Op) {
        if let Ok(mut l) = LOG.lock() {
            if let Some((path, v)) = l.as_mut() {
                if path == p {
                    v.push(op);
                }
            }
        }
    }
}
