//! The serial console's host side: where guest output goes and where input comes from.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use crate::config::ConsoleConfig;

/// A cloneable sink for guest console output that survives guest reboots (the serial
/// device is rebuilt with the VM; the output stream is not).
#[derive(Clone)]
pub struct ConsoleOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl ConsoleOutput {
    pub fn open(config: &ConsoleConfig) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = match config {
            ConsoleConfig::Stdio => Box::new(RawStdout),
            ConsoleConfig::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("console file {}: {e}", path.display()))
                    })?,
            ),
        };
        Ok(Self(Arc::new(Mutex::new(sink))))
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
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
