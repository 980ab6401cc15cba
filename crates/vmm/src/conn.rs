//! Non-blocking unix stream sockets for the control API and the console socket: listening
//! on a path, and client connections with a bounded output backlog so that a slow or
//! stalled client never blocks the VMM (or the guest writing its console).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A listening socket; its path is removed when it is dropped.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Listens on `path`, mode 0600 (only the VMM's user may connect). A stale socket file
    /// left by a VMM that died is replaced; a socket another process still serves, or a
    /// path that is not a socket, is an error. `what` names the socket in messages.
    pub fn bind(path: &Path, what: &str) -> Result<Self, String> {
        let fail = |why: String| format!("{what} {}: {why}", path.display());
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(fail(format!(
                "path too long ({len} bytes; unix sockets allow {MAX_SOCKET_PATH})"
            )));
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(fail("in use by another running process".into())),
                Err(_) => std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?,
            },
            Ok(_) => return Err(fail("exists and is not a socket".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
        // From here on the file is ours: remove it on any error below.
        let this = Self {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(e.to_string()))?;
        this.listener
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        Ok(this)
    }

    /// The next pending connection, made non-blocking; `None` when there is none.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            // A client that gave up before we accepted it is not our error.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What to do when a client's output backlog would pass its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest bytes (console output: a client that cannot keep up loses output,
    /// like a terminal on a serial line without flow control).
    DropOldest,
    /// Give up on the client (API events and replies must not be lost silently).
    Disconnect,
}

/// What a read on a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side (or the connection failed).
    Closed,
}

/// One client connection.
pub struct Conn {
    stream: UnixStream,
    out: VecDeque<u8>,
    /// Set when epoll reported input; cleared when a read finds nothing more.
    pub readable: bool,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            out: VecDeque::new(),
            readable: true,
        }
    }

    /// Queues `bytes` and writes as much as the socket takes now. Returns how many older
    /// bytes were dropped ([`Overflow::DropOldest`]), or an error when the peer is gone or,
    /// with [`Overflow::Disconnect`], the backlog would pass `limit`.
    pub fn send(&mut self, bytes: &[u8], limit: usize, overflow: Overflow) -> io::Result<usize> {
        let mut rest = bytes;
        if self.out.is_empty() {
            let n = write_some(&self.stream, rest)?;
            rest = &rest[n..];
        }
        if rest.is_empty() {
            return Ok(0);
        }
        self.out.extend(rest);
        self.flush()?;
        let excess = self.out.len().saturating_sub(limit);
        if excess == 0 {
            return Ok(0);
        }
        match overflow {
            Overflow::DropOldest => {
                self.out.drain(..excess);
                Ok(excess)
            }
            Overflow::Disconnect => Err(io::Error::other(format!(
                "client is not reading (over {limit} bytes waiting)"
            ))),
        }
    }

    /// Writes the backlog until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = write_some(&self.stream, self.out.as_slices().0)?;
            if n == 0 {
                break;
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Bytes waiting to be written.
    pub fn backlog(&self) -> usize {
        self.out.len()
    }

    /// Reads what is available into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Received {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Received::Closed,
                Ok(n) => Received::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    Received::WouldBlock
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Received::Closed,
            };
        }
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// One non-blocking write: how much the socket took (0 if it would block). A closed peer
/// is EPIPE (SIGPIPE is ignored by the VMM).
fn write_some(mut stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        return match stream.write(bytes) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-conn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bind_replaces_stale_sockets_and_refuses_live_ones() {
        let dir = tmp("bind");
        let path = dir.join("api.sock");
        let l = Listener::bind(&path, "--api-socket").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = Listener::bind(&path, "--api-socket").err().unwrap();
        assert!(e.ends_with("in use by another running process"), "{e}");
        drop(l);
        assert!(!path.exists(), "the socket file is removed on drop");
        // A socket file nobody listens on (a VMM that was killed) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = Listener::bind(&path, "--api-socket").unwrap();
        drop(l);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::write(&path, b"x").unwrap();
        let e = Listener::bind(&path, "--api-socket").err().unwrap();
        assert!(e.ends_with("exists and is not a socket"), "{e}");
        let long = dir.join("x".repeat(120));
        let e = Listener::bind(&long, "--console").err().unwrap();
        assert!(e.contains("path too long"), "{e}");
        let e = Listener::bind(&dir.join("no/such/dir/s"), "--console")
            .err()
            .unwrap();
        assert!(e.starts_with("--console "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backlog_is_bounded_and_flushed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a);
        // Fill the socket buffer, then the backlog.
        let chunk = vec![7u8; 64 * 1024];
        let mut dropped = 0;
        for _ in 0..64 {
            dropped += c.send(&chunk, 100_000, Overflow::DropOldest).unwrap();
        }
        assert!(dropped > 0);
        assert_eq!(c.backlog(), 100_000);
        assert!(c
            .send(&chunk, 100_000, Overflow::Disconnect)
            .unwrap_err()
            .to_string()
            .contains("not reading"));
        // The reader drains; the backlog follows.
        b.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while c.backlog() > 0 {
            while b.read(&mut buf).is_ok() {}
            c.flush().unwrap();
        }
        drop(b);
        assert!(c.send(b"x", 10, Overflow::DropOldest).is_err(), "EPIPE");
        let mut buf = [0u8; 4];
        assert_eq!(c.read(&mut buf), Received::Closed);
    }
}
