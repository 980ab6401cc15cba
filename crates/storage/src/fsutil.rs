//! File-system helpers: durable atomic writes, no-replace renames, statvfs.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Error, Result};

/// fsyncs a directory so that entries created, renamed or removed in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, "open directory", e))?;
    d.sync_all()
        .map_err(|e| Error::io(dir, "fsync directory", e))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `data` atomically and durably: temp file in the same
/// directory, fsync, rename over `path`, fsync the directory. A crash leaves
/// either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, "create", e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename", e))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r?;
    sync_dir(dir)
}

/// Removes a file (missing is fine) and makes the removal durable.
pub fn remove_durable(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "remove", e)),
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("{}: path contains a NUL byte", p.display())))
}

/// Renames `from` to `to` unless `to` exists (then fails with
/// `AlreadyExists`), atomically: two creators of one volume name cannot
/// overwrite each other.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive
    // the call; renameat2 reads them only.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return sync_dir(parent(to));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // File systems without RENAME_NOREPLACE: a hard link fails if the
        // target exists, which gives the same guarantee.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to).map_err(|e| Error::io(to, "link", e))?;
            let _ = std::fs::remove_file(from);
            sync_dir(parent(to))
        }
        _ => Err(Error::io(to, "rename", err)),
    }
}

/// Capacity, allocation and available bytes of the file system holding
/// `path`, as libvirt computes them for dir pools.
pub fn fs_usage(path: &Path) -> Result<(u64, u64, u64)> {
    let c = cstr(path)?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a live, writable struct.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(Error::io(path, "statvfs", std::io::Error::last_os_error()));
    }
    let fr = st.f_frsize as u64;
    let cap = st.f_blocks as u64 * fr;
    let alloc = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * fr;
    let avail = st.f_bavail as u64 * fr;
    Ok((cap, alloc, avail))
}

/// Allocates `[offset, offset+len)` of an open file (posix_fallocate
/// semantics, keeping the data), for `--allocate` resizes.
pub fn allocate(f: &std::fs::File, path: &Path, offset: u64, len: u64) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate takes no memory arguments; the fd is owned by `f`.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    if r != 0 {
        return Err(Error::io(
            path,
            "fallocate",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
