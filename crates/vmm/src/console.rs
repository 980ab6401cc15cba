//! The serial console's host side: where guest output goes and where input comes from.
//!
//! Output goes to one main sink (stdout, a file, or every client of the console socket)
//! and, with `console_log`, to a log file as well. Input comes from stdin or from console
//! socket clients; the event loop feeds it into the UART.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{ConsoleConfig, VmConfig};
use crate::conn::{Conn, Overflow};

/// Console output held for one socket client that is not reading; older bytes are dropped
/// beyond this (the console log, if any, still has everything).
pub const CLIENT_BACKLOG: usize = 1 << 20;

/// A cloneable sink for guest console output that survives guest reboots (the serial
/// device is rebuilt with the VM; the output stream is not).
#[derive(Clone)]
pub struct ConsoleOutput(Arc<Sinks>);

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").finish_non_exhaustive()
    }
}

struct Sinks {
    main: Mutex<Box<dyn Write + Send>>,
    log: Option<Mutex<LogFile>>,
}

struct LogFile {
    file: File,
    failed: bool,
}

fn open_append(path: &Path, what: &str) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

impl ConsoleOutput {
    /// Opens the console's sinks; a socket console writes to `hub`, which the caller made
    /// (and serves) for `config.console`.
    pub fn open(config: &VmConfig, hub: Option<&Arc<ConsoleHub>>) -> io::Result<Self> {
        let main: Box<dyn Write + Send> = match (&config.console, hub) {
            (ConsoleConfig::Stdio, _) => Box::new(RawStdout),
            (ConsoleConfig::File(path), _) => Box::new(open_append(path, "console file")?),
            (ConsoleConfig::Socket(_), Some(hub)) => Box::new(HubWriter(hub.clone())),
            (ConsoleConfig::Socket(path), None) => {
                return Err(io::Error::other(format!(
                    "console socket {}: not listening",
                    path.display()
                )))
            }
        };
        let log = match &config.console_log {
            Some(path) => Some(Mutex::new(LogFile {
                file: open_append(path, "console log")?,
                failed: false,
            })),
            None => None,
        };
        Ok(Self(Arc::new(Sinks {
            main: Mutex::new(main),
            log,
        })))
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = &self.0.log {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = log.file.write_all(buf) {
                // Reported once; the console itself keeps working.
                if !std::mem::replace(&mut log.failed, true) {
                    log::warn!("console log: {e}; output is missing from it from here on");
                }
            }
        }
        self.0
            .main
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .main
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
    }
}

/// The clients of the console socket, shared by the vCPU thread that writes guest output
/// (through [`ConsoleOutput`]) and the event loop that accepts clients, reads their input
/// and writes what they could not take at once.
#[derive(Default)]
pub struct ConsoleHub {
    clients: Mutex<HashMap<u64, Conn>>,
    dropped: AtomicU64,
}

impl ConsoleHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// The clients, by event-loop token.
    pub fn clients(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Output bytes dropped so far for clients that did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends guest output to every client without ever blocking: a client that is not
    /// reading keeps a bounded backlog, one that went away is removed.
    pub fn broadcast(&self, bytes: &[u8]) {
        let mut clients = self.clients();
        clients.retain(
            |_, c| match c.send(bytes, CLIENT_BACKLOG, Overflow::DropOldest) {
                Ok(dropped) => {
                    self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            },
        );
    }
}

/// [`ConsoleOutput`]'s main sink for a socket console.
struct HubWriter(Arc<ConsoleHub>);

impl Write for HubWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.broadcast(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Unbuffered stdout: guest output appears as the guest writes it. A closed stdout (EPIPE)
/// must not kill the VM, so write errors are swallowed after the first report.
struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        match out.write_all(buf).and_then(|_| out.flush()) {
            Ok(()) => Ok(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(buf.len()),
            Err(e) => Err(e),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Puts a terminal on stdin into a mode where keys reach the guest one at a time without
/// local echo, but Ctrl-C still signals vireo; restores the original mode when dropped.
pub struct TerminalGuard {
    saved: Option<libc::termios>,
}

impl TerminalGuard {
    pub fn new(enable: bool) -> Self {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if !enable || unsafe { libc::isatty(fd) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid tty descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a valid tty (checked above) and `t` is a valid termios buffer.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        t.c_iflag &= !(libc::ICRNL | libc::IXON);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `t` was initialised by tcgetattr.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        Self { saved: Some(saved) }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read from the same descriptor.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}

/// Reads whatever is available on stdin (unbuffered, so that epoll readiness stays exact).
pub fn read_stdin(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads into a valid, writable buffer of the given length from fd 0.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether a read of stdin would return at once (data, EOF or an error) instead of
/// blocking.
pub fn stdin_ready() -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd structure without waiting.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n > 0 && fds.revents != 0
}
