//! Facts about VMM processes from /proc, and pidfds to wait for processes that are not
//! (or no longer) our children.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Fields of /proc/PID/stat after the command name (which may contain spaces and ')').
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process's start time (clock ticks since boot): with the pid it identifies a
/// process across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    // Field 22 of stat; the fields after ')' start at field 3.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` still exists (and is not a zombie).
pub fn is_alive(pid: i32, start: u64) -> bool {
    match stat_fields(pid) {
        Some(f) => {
            f.first().map(String::as_str) != Some("Z")
                && f.get(19).and_then(|s| s.parse().ok()) == Some(start)
        }
        None => false,
    }
}

/// User + system CPU time of `pid`, in nanoseconds.
pub fn cpu_time_ns(pid: i32) -> Option<u64> {
    let f = stat_fields(pid)?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(ticks * (1_000_000_000 / hz))
}

/// A file descriptor that becomes readable when `pid` exits (Linux ≥ 5.3).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps our child `pid`, returning its wait status; `None` if it is not our child.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local integer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory side effects; the pid was checked against its start time
    // by the caller's bookkeeping.
    unsafe { libc::kill(pid, sig) };
}

/// Describes a wait status: "exit status 1", "signal 9 (SIGKILL)".
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("signal {sig} ({})", signal_name(sig))
    } else {
        format!("wait status {status:#x}")
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive() {
        let pid = std::process::id() as i32;
        let start = start_time(pid).unwrap();
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start + 1));
        assert!(cpu_time_ns(pid).is_some());
        assert!(pidfd_open(pid).is_ok());
    }

    #[test]
    fn statuses_are_described() {
        let child = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let status = reap(pid).unwrap();
        assert_eq!(describe_status(status), "signal 9 (SIGKILL)");
        drop(child);
    }
}
