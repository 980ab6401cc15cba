//! `vireo console`: the guest's serial console on this terminal, through the VMM's
//! console socket (whose path vireod reports). Raw mode, so every key (Ctrl-C too) goes
//! to the guest; Ctrl-] detaches. Ends when the VM stops.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{Error, Result};

/// Ctrl-]: detaches, as in virsh.
const ESCAPE: u8 = 0x1d;

pub fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket)
        .map_err(|e| Error(format!("cannot open the console {}: {e}", socket.display())))
}

pub fn attach(socket: &Path, name: &str) -> Result {
    run(connect(socket)?, name)
}

/// Raw terminal mode on stdin while it lives.
struct RawMode(libc::termios);

impl RawMode {
    fn enable() -> Option<Self> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a tty.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a tty and `t` a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw edits the struct in place; tcsetattr applies it to the tty.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same descriptor.
        unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &self.0) };
    }
}

/// Copies the socket to stdout and stdin to the socket until the console closes (the VM
/// stopped) or Ctrl-] is typed. Without a terminal, input ends at EOF and output continues.
pub fn run(stream: UnixStream, name: &str) -> Result {
    eprintln!("Connected to domain '{name}'");
    eprintln!("Escape character is ^] (Ctrl + ])");
    let raw = RawMode::enable();
    let mut stdin_open = true;
    let mut sock = stream;
    let mut stdout = io::stdout().lock();
    let mut buf = [0u8; 4096];
    let detached = loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if fds[0].revents != 0 {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => {
                    stdout.write_all(&buf[..n])?;
                    stdout.flush()?;
                }
            }
        }
        if fds[1].revents != 0 {
            // SAFETY: reads into a valid buffer from fd 0.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                stdin_open = false;
                continue;
            }
            let input = &buf[..n as usize];
            if let Some(i) = input.iter().position(|&b| b == ESCAPE) {
                let _ = sock.write_all(&input[..i]);
                break true;
            }
            if sock.write_all(input).is_err() {
                break false;
            }
        }
    };
    drop(raw);
    if detached {
        eprintln!();
    }
    Ok(())
}
