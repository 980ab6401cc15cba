//! The vireo virtual machine monitor: one VM per process.
//!
//! Data flows one way: [`VmConfig`] (from `vireo run` flags or, later, the daemon's domain
//! model) → [`vm_builder`] (memory, KVM VM, boot, devices, vCPUs) → vCPU threads
//! ([`vcpu_thread`]) and the event loop here, which ends the VM on poweroff, reset,
//! a guest failure or a stop signal, and rebuilds it on reset.

pub mod cli;
pub mod config;
pub mod console;
pub mod signals;
pub mod vcpu_thread;
pub mod vm_builder;

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vireo_boot::loader;
use vireo_devices::PowerRequest;
use vireo_hypervisor::memory::host_memory_bytes;
use vireo_hypervisor::vm::{max_vcpus, open_kvm};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub use config::{ConsoleConfig, VmConfig};
pub use vcpu_thread::GuestFailure;

/// Everything that can stop a VM from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Boot(#[from] vireo_boot::BootError),
    #[error(transparent)]
    Hypervisor(#[from] vireo_hypervisor::Error),
    #[error("cannot build ACPI tables: {0}")]
    Acpi(String),
    #[error("cannot set up devices: {0}")]
    Device(String),
    #[error("cannot open the console: {0}")]
    Console(#[source] std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the guest failed on {0}")]
    Guest(GuestFailure),
}

/// How a VM run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reset and `no_reboot` was set.
    Reset,
    /// A stop signal (SIGINT, SIGTERM, SIGHUP) ended the VM.
    Signal(libc::c_int),
}

impl Outcome {
    /// The process exit status for this outcome: 0 for a guest-initiated end, 128 + signal
    /// number for a stop signal, as shells report it.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Poweroff | Outcome::Reset => 0,
            Outcome::Signal(s) => 128u8.saturating_add(s as u8),
        }
    }
}

/// What woke the event loop up for good.
enum Event {
    Power(PowerRequest),
    Failure(GuestFailure),
    Signal(libc::c_int),
}

const TOKEN_POWER: u64 = 1;
const TOKEN_FAILURE: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_STDIN: u64 = 4;

/// Checks the configuration, builds the VM and runs it until it ends.
pub fn run(config: &VmConfig) -> Result<Outcome, VmmError> {
    let start = Instant::now();
    // Everything that can be checked without KVM is checked first, so bad flags are
    // reported the same way on any machine.
    config.validate(host_memory_bytes(), u32::MAX)?;
    let kernel = loader::probe_kernel(&config.kernel)?;
    loader::check_cmdline(&kernel, &config.cmdline)?;
    if let Some(initrd) = &config.initrd {
        loader::check_initrd(initrd)?;
    }
    let kvm = open_kvm()?;
    config.validate(
        host_memory_bytes(),
        max_vcpus(&kvm).try_into().unwrap_or(u32::MAX),
    )?;

    signals::install_vcpu_kick_handler()?;
    // Block stop signals before any vCPU thread exists so that only the signalfd sees them.
    let stop_signals = signals::stop_signalfd()?;
    let platform = vm_builder::Platform::new(config, start)?;
    let stdin_console = config.console == ConsoleConfig::Stdio;
    let _terminal = console::TerminalGuard::new(stdin_console);
    let mut boots = 0u32;
    loop {
        boots += 1;
        let build_start = Instant::now();
        let mut vm = vm_builder::build(&kvm, config, &kernel, &platform)?;
        log::debug!(
            "boot {boots}: VM built in {:?} ({:?} since vireo started)",
            build_start.elapsed(),
            start.elapsed()
        );
        let event = event_loop(&vm, &platform, &stop_signals, stdin_console);
        stop_vcpus(&mut vm);
        drop(vm);
        match event? {
            Event::Power(PowerRequest::Reset) if !config.no_reboot => {
                log::info!("guest reset; restarting the VM");
                platform.power.clear();
            }
            Event::Power(PowerRequest::Reset) => return Ok(Outcome::Reset),
            Event::Power(PowerRequest::Poweroff) => return Ok(Outcome::Poweroff),
            Event::Signal(sig) => return Ok(Outcome::Signal(sig)),
            Event::Failure(f) => return Err(VmmError::Guest(f)),
        }
    }
}

fn event_loop(
    vm: &vm_builder::RunningVm,
    platform: &vm_builder::Platform,
    stop_signals: &signals::StopSignals,
    stdin_console: bool,
) -> Result<Event, VmmError> {
    let epoll = Epoll::new()?;
    let add = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    add(platform.power.eventfd().as_raw_fd(), TOKEN_POWER)?;
    add(vm.shared.failed.as_raw_fd(), TOKEN_FAILURE)?;
    add(stop_signals.as_raw_fd(), TOKEN_SIGNAL)?;
    // A regular file or /dev/null on stdin is refused by epoll: then there is no console
    // input, which is fine.
    if stdin_console {
        let _ = add(0, TOKEN_STDIN);
    }
    // Console input the UART's FIFO had no room for yet.
    let mut pending: Vec<u8> = Vec::new();
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        if let Some(req) = platform.power.pending() {
            return Ok(Event::Power(req));
        }
        if let Some(f) = vm
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Ok(Event::Failure(f));
        }
        let timeout = if pending.is_empty() { -1 } else { 10 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    if let Some(sig) = stop_signals.read() {
                        return Ok(Event::Signal(sig));
                    }
                }
                TOKEN_STDIN if pending.is_empty() => {
                    let mut buf = [0u8; 256];
                    match console::read_stdin(&mut buf) {
                        Ok(0) | Err(_) => {
                            // EOF: the guest keeps running without console input.
                            let _ = epoll.ctl(ControlOperation::Delete, 0, EpollEvent::default());
                        }
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                _ => {} // power/failure: checked at the top of the loop
            }
        }
        if !pending.is_empty() {
            let taken = vm
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(&pending);
            pending.drain(..taken);
        }
    }
}

/// Stops every vCPU thread: sets the stop flag and kicks each thread out of KVM_RUN until
/// it has left its loop, then joins it.
fn stop_vcpus(vm: &mut vm_builder::RunningVm) {
    use std::os::unix::thread::JoinHandleExt;
    vm.shared.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vm.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        for t in vm.threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread handle is alive (not joined); the kick signal has a handler
            // installed in every thread.
            unsafe { libc::pthread_kill(t.as_pthread_t(), signals::vcpu_kick_signal()) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in vm.threads.drain(..) {
        if t.is_finished() {
            let _ = t.join();
        } else {
            // Signals always interrupt KVM_RUN, so this means a thread is stuck elsewhere.
            log::warn!("a vCPU thread did not stop within 5 s; abandoning it");
        }
    }
}

/// Runs the VM and turns the result into a process exit status, reporting errors in one
/// line on stderr (a guest failure adds its register dump).
pub fn run_and_report(config: &VmConfig) -> std::process::ExitCode {
    match run(config) {
        Ok(outcome) => {
            match outcome {
                Outcome::Signal(sig) => {
                    eprintln!("vireo: {} received; VM stopped", signals::signal_name(sig))
                }
                Outcome::Reset => log::info!("guest reset; exiting (--no-reboot)"),
                Outcome::Poweroff => log::info!("guest powered off"),
            }
            std::process::ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            eprintln!("vireo: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A minimal stderr logger; the level comes from `VIREO_LOG` (error, warn, info, debug,
/// trace; default warn).
pub mod logging {
    struct StderrLogger;

    impl log::Log for StderrLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "vireo: {}: {}",
                    record.level().as_str().to_lowercase(),
                    record.args()
                );
            }
        }
        fn flush(&self) {}
    }

    pub fn init() {
        let level = match std::env::var("VIREO_LOG").as_deref() {
            Ok("error") => log::LevelFilter::Error,
            Ok("info") => log::LevelFilter::Info,
            Ok("debug") => log::LevelFilter::Debug,
            Ok("trace") => log::LevelFilter::Trace,
            Ok("off") => log::LevelFilter::Off,
            _ => log::LevelFilter::Warn,
        };
        if log::set_logger(&StderrLogger).is_ok() {
            log::set_max_level(level);
        }
    }
}
