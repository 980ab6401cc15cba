//! Process signals: stop signals arrive on a signalfd read by the event loop, and a
//! real-time signal kicks vCPU threads out of KVM_RUN.
//!
//! Which signals stop the VM depends on who controls it. Run from a terminal (`vireo run`),
//! SIGINT, SIGTERM and SIGHUP do, as for any foreground program. With a control socket
//! (`--api-socket`, how vireod runs VMMs) SIGHUP is ignored: the VM must outlive the
//! session or terminal of whoever launched it, and it is stopped through the socket (or
//! SIGTERM/SIGINT). SIGPIPE is always ignored: a console or control client that goes away
//! is an EPIPE on one connection, never the end of the VM.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Signals that stop the VM when it runs without a control socket.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// Signals that stop a VM controlled through its API socket.
pub const API_STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// The signal used to interrupt a vCPU's KVM_RUN.
pub fn vcpu_kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run` page, or null on other threads and while it is not
    /// mapped. Read by the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Tells the kick handler where this thread's `kvm_run` page is (null: none). A vCPU
/// thread sets it before its first KVM_RUN and clears it before the vCPU is dropped.
pub fn set_thread_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|p| p.set(run));
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Setting immediate_exit closes the window between the thread checking its stop/pause
    // flags and entering KVM_RUN: a kick that lands there makes the next KVM_RUN return
    // EINTR at once instead of running the guest until its next exit. `try_with` cannot
    // fail for a const-initialised Cell without destructor, and does not panic if it did.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: a non-null pointer is this thread's mapped kvm_run page (see
            // set_thread_kvm_run); a volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler: it makes KVM_RUN return EINTR (see `kick_handler`).
pub fn install_vcpu_kick_handler() -> io::Result<()> {
    register_signal_handler(vcpu_kick_signal(), kick_handler)
        .map_err(|e| io::Error::other(format!("installing the vCPU kick handler: {e}")))
}

/// Ignores `sig` in the whole process.
pub fn ignore(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for the catchable signals passed here.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks `signals` in the calling thread (and so in every thread it spawns later) and
/// returns a signalfd that receives them.
pub fn stop_signalfd(signals: &[libc::c_int]) -> io::Result<StopSignals> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(StopSignals(unsafe { OwnedFd::from_raw_fd(fd) }))
}

pub struct StopSignals(OwnedFd);

impl StopSignals {
    /// The next pending stop signal, if any.
    pub fn read(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n as usize == size).then_some(info.ssi_signo as libc::c_int)
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Name of a stop signal for messages.
pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
