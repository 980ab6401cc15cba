//! The host side of virtio-vsock, opened once when the VMM starts and kept across guest
//! reboots: the guest's context id and the unix socket host clients connect to.
//!
//! Host → guest: a client connects to `PATH` and writes `CONNECT <port>\n`; once the
//! guest accepts, it reads `OK <hostport>\n` and then the stream. Guest → host: a guest
//! connection to host port P is a connection to the unix socket `PATH_P`, which a host
//! program listens on.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Lowest context id a guest may have (0, 1 and 2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u64 = 3;
/// Context ids are 32-bit in practice (Linux's `svm_cid`); `u32::MAX` means "any".
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cid {0} is out of range ({MIN_GUEST_CID}..={MAX_GUEST_CID})")]
    Cid(u64),
    #[error("socket path {0} is too long for a unix socket")]
    PathTooLong(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{0} is in use by another listener")]
    InUse(PathBuf),
    #[error("socket {}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
}

/// The vsock device's host side.
#[derive(Debug)]
pub struct VsockBackend {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
}

/// Longest path that fits `sockaddr_un` with its terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// Room for `_4294967295` after the path, for guest → host ports.
const PORT_SUFFIX_MAX: usize = 11;

impl VsockBackend {
    /// Checks `cid` and listens on `path` (a stale socket left by a dead VMM is replaced;
    /// a live one, or any other file, is an error).
    pub fn open(cid: u64, path: &Path) -> Result<Self, BackendError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(BackendError::Cid(cid));
        }
        if path.as_os_str().len() + PORT_SUFFIX_MAX > SUN_PATH_MAX {
            return Err(BackendError::PathTooLong(path.to_path_buf()));
        }
        let io_err = |err| BackendError::Io {
            path: path.to_path_buf(),
            err,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(BackendError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(BackendError::InUse(path.to_path_buf())),
                Err(_) => std::fs::remove_file(path).map_err(io_err)?,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        // Like the VMM's other sockets: only its user may connect (to the guest).
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok(Self {
            cid,
            path: path.to_path_buf(),
            listener,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket a guest connection to host port `port` goes to.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Connects to the host listener for guest → host port `port`, without blocking (a
    /// full backlog is an error like a missing listener: the guest gets a reset).
    pub fn connect_port(&self, port: u32) -> io::Result<UnixStream> {
        connect_nonblocking(&self.port_path(port))
    }
}

impl Drop for VsockBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable unix socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: creates a new socket; no pointers are involved.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un and the length given is its
    // size; `fd` is a valid socket.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn open_checks_cid_path_and_stale_sockets() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        assert!(matches!(
            VsockBackend::open(2, &path),
            Err(BackendError::Cid(2))
        ));
        assert!(VsockBackend::open(1 << 32, &path).is_err());
        let long = dir.as_path().join("x".repeat(100));
        assert!(matches!(
            VsockBackend::open(3, &long),
            Err(BackendError::PathTooLong(_))
        ));

        let b = VsockBackend::open(3, &path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            VsockBackend::open(4, &path),
            Err(BackendError::InUse(_))
        ));
        assert_eq!(b.port_path(52), dir.as_path().join("v.sock_52"));
        drop(b);
        assert!(!path.exists());
        // A socket whose listener is gone is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let b = VsockBackend::open(5, &path).unwrap();
        assert_eq!(b.cid(), 5);
        drop(b);
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            VsockBackend::open(3, &path),
            Err(BackendError::NotASocket(_))
        ));
    }

    #[test]
    fn guest_connections_go_to_port_sockets() {
        let dir = TempDir::new().unwrap();
        let b = VsockBackend::open(3, &dir.as_path().join("v")).unwrap();
        let e = b.connect_port(1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let l = UnixListener::bind(b.port_path(1000)).unwrap();
        let _s = b.connect_port(1000).unwrap();
        assert!(l.accept().is_ok());
    }
}
