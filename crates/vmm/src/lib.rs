//! The vireo virtual machine monitor: one VM per process.
//!
//! Data flows one way: [`VmConfig`] (from `vireo run` flags, a `--config` file written by
//! the daemon from its domain model) → [`vm_builder`] (memory, KVM VM, boot, devices,
//! vCPUs) → vCPU threads ([`vcpu_thread`]) and the event loop ([`controller`]), which ends
//! the VM on poweroff, reset, a guest failure, a stop signal or the `quit` command, and
//! rebuilds it on reset. The control API ([`api`], docs/vmm-api.md) is how the daemon
//! drives a running VMM.

pub mod api;
pub mod backends;
pub mod cli;
pub mod config;
pub mod conn;
pub mod console;
pub mod controller;
pub mod device_manager;
pub mod exit_file;
pub mod net;
pub mod signals;
pub mod vcpu_thread;
pub mod vm_builder;

use std::io::Write;
use std::time::Instant;

use api::{Event, ShutdownReason};
use controller::{Controller, Wake};
use exit_file::ExitReport;
use vireo_boot::loader;
use vireo_devices::PowerRequest;
use vireo_hypervisor::memory::host_memory_bytes;
use vireo_hypervisor::vm::{max_vcpus, open_kvm};

pub use config::{
    BalloonConfig, ConsoleConfig, DiskConfig, DiskFormat, NetConfig, RngConfig, VmConfig,
    VmmOptions, VsockConfig,
};
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
    /// A device backend (disk image, …) cannot be opened; the message names the flag.
    #[error("{0}")]
    Backend(String),
    #[error("cannot open the console: {0}")]
    Console(#[source] std::io::Error),
    #[error("{0}")]
    Socket(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the guest failed on {0}")]
    Guest(GuestFailure),
    #[error("the guest kernel panicked (reported through pvpanic)")]
    GuestPanicked,
}

/// How a VM run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest reset (or `system_reset` was asked for) and `no_reboot` was set.
    Reset,
    /// The `quit` command.
    Quit,
    /// A stop signal (SIGINT, SIGTERM; SIGHUP without an API socket) ended the VM.
    Signal(libc::c_int),
}

impl Outcome {
    /// The process exit status for this outcome: 0 for a guest-initiated end or `quit`,
    /// 128 + signal number for a stop signal, as shells report it.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Poweroff | Outcome::Reset | Outcome::Quit => 0,
            Outcome::Signal(s) => 128u8.saturating_add(s as u8),
        }
    }
}

/// Why a run ended, as the SHUTDOWN event and the exit file report it.
pub fn exit_report(result: &Result<Outcome, VmmError>) -> ExitReport {
    let (reason, detail) = match result {
        Ok(Outcome::Poweroff) => (ShutdownReason::Poweroff, "the guest powered off".into()),
        Ok(Outcome::Reset) => (
            ShutdownReason::Reset,
            "the VM was reset and no_reboot is set".into(),
        ),
        Ok(Outcome::Quit) => (ShutdownReason::Quit, "quit command".into()),
        Ok(Outcome::Signal(sig)) => (
            ShutdownReason::Signal,
            signals::signal_name(*sig).to_string(),
        ),
        Err(VmmError::Guest(f)) => (ShutdownReason::GuestFailure, f.to_string()),
        Err(e @ VmmError::GuestPanicked) => (ShutdownReason::GuestPanicked, e.to_string()),
        Err(e) => (ShutdownReason::Error, e.to_string()),
    };
    let status = match result {
        Ok(o) => i32::from(o.exit_code()),
        Err(_) => 1,
    };
    ExitReport::new(status, reason, detail)
}

/// Checks the configuration, builds the VM and runs it until it ends.
pub fn run(config: &VmConfig) -> Result<Outcome, VmmError> {
    run_with(config, &VmmOptions::default())
}

/// [`run`] with the process options: the control socket, the exit file (written before
/// the final SHUTDOWN event is sent, so a client that sees the socket close finds it) and
/// `start_paused`.
pub fn run_with(config: &VmConfig, options: &VmmOptions) -> Result<Outcome, VmmError> {
    let mut controller = None;
    let result = boot_loop(config, options, &mut controller);
    let report = exit_report(&result);
    write_exit_file(options, &report);
    if let Some(ctl) = controller {
        let reason = match &result {
            Ok(Outcome::Poweroff) => ShutdownReason::Poweroff,
            Ok(Outcome::Reset) => ShutdownReason::Reset,
            Ok(Outcome::Quit) => ShutdownReason::Quit,
            Ok(Outcome::Signal(_)) => ShutdownReason::Signal,
            Err(VmmError::Guest(_)) => ShutdownReason::GuestFailure,
            Err(VmmError::GuestPanicked) => ShutdownReason::GuestPanicked,
            Err(_) => ShutdownReason::Error,
        };
        ctl.finish(Event::Shutdown {
            reason,
            detail: report.detail,
            status: report.status,
        });
    }
    result
}

fn write_exit_file(options: &VmmOptions, report: &ExitReport) {
    if let Some(path) = &options.exit_file {
        if let Err(e) = report.write(path) {
            log::error!("--exit-file {}: {e}", path.display());
        }
    }
}

fn boot_loop(
    config: &VmConfig,
    options: &VmmOptions,
    slot: &mut Option<Controller>,
) -> Result<Outcome, VmmError> {
    let start = Instant::now();
    // Everything that can be checked without KVM is checked first, so bad flags are
    // reported the same way on any machine.
    config.validate(host_memory_bytes(), u32::MAX)?;
    let kernel = loader::probe_kernel(&config.kernel)?;
    loader::check_cmdline(&kernel, &config.cmdline)?;
    if let Some(initrd) = &config.initrd {
        loader::check_initrd(initrd)?;
    }
    // See signals.rs for why these signals and not others.
    signals::ignore(libc::SIGPIPE)?;
    let stop_set: &[libc::c_int] = if options.api_socket.is_some() {
        signals::ignore(libc::SIGHUP)?;
        &signals::API_STOP_SIGNALS
    } else {
        &signals::STOP_SIGNALS
    };
    signals::install_vcpu_kick_handler()?;
    // Block stop signals before any vCPU thread exists so that only the signalfd sees them.
    let stop_signals = signals::stop_signalfd(stop_set)?;
    // The sockets before KVM: a bad socket path is bad input, reported on any machine.
    let ctl = slot.insert(Controller::new(config, options, stop_signals)?);
    // Backends before KVM too: a missing or locked image, a missing TAP, is bad input.
    let backends = backends::Backends::open(config)?;
    ctl.attach_backends(&backends);
    let kvm = open_kvm()?;
    config.validate(
        host_memory_bytes(),
        max_vcpus(&kvm).try_into().unwrap_or(u32::MAX),
    )?;
    let platform = vm_builder::Platform::new(config, start, ctl.console_hub(), backends)?;
    ctl.watch_platform(&platform)?;
    let _terminal = console::TerminalGuard::new(config.console == ConsoleConfig::Stdio);
    loop {
        ctl.begin_boot(&platform);
        let build_start = Instant::now();
        let mut vm = vm_builder::build(&kvm, config, &kernel, &platform, ctl.paused())?;
        log::debug!(
            "VM built in {:?} ({:?} since vireo started)",
            build_start.elapsed(),
            start.elapsed()
        );
        let wake = ctl.run_boot(&vm, &platform);
        vm.shared.control.stop(&mut vm.threads);
        drop(vm);
        match wake? {
            Wake::Power(PowerRequest::Reset) if !config.no_reboot => {
                log::info!("VM reset; restarting it");
                platform.power.clear();
                let guest = !ctl.take_api_reset();
                ctl.emit(Event::Reset { guest });
            }
            Wake::Power(PowerRequest::Reset) => return Ok(Outcome::Reset),
            Wake::Power(PowerRequest::Poweroff) => return Ok(Outcome::Poweroff),
            Wake::Power(PowerRequest::Panic) => {
                ctl.emit(Event::GuestPanicked);
                return Err(VmmError::GuestPanicked);
            }
            Wake::Signal(sig) => return Ok(Outcome::Signal(sig)),
            Wake::Quit => return Ok(Outcome::Quit),
            Wake::Failure(f) => return Err(VmmError::Guest(f)),
        }
    }
}

/// Writes a line to stderr; a closed stderr (the launching daemon died) is ignored, since
/// nothing may stop the VM because it cannot report.
pub fn report_line(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The entry point of `vireo-vmm` and `vireo run`: resolves the flags (or `--config`),
/// runs the VM and turns the result into a process exit status, reporting errors in one
/// line on stderr (a guest failure adds its register dump) and in the exit file.
pub fn run_from_args(args: &cli::RunArgs) -> std::process::ExitCode {
    let options = args.options();
    let result = match args.vm_config() {
        Ok(config) => run_with(&config, &options),
        Err(e) => {
            let result = Err(VmmError::Config(e));
            write_exit_file(&options, &exit_report(&result));
            result
        }
    };
    report_and_exit(result)
}

/// Reports how the run ended and returns the matching exit status.
pub fn report_and_exit(result: Result<Outcome, VmmError>) -> std::process::ExitCode {
    match result {
        Ok(outcome) => {
            match outcome {
                Outcome::Signal(sig) => report_line(format_args!(
                    "vireo: {} received; VM stopped",
                    signals::signal_name(sig)
                )),
                Outcome::Reset => log::info!("guest reset; exiting (--no-reboot)"),
                Outcome::Poweroff => log::info!("guest powered off"),
                Outcome::Quit => log::info!("quit command; VM stopped"),
            }
            std::process::ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            report_line(format_args!("vireo: error: {e}"));
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
                // Not eprintln!: it panics when stderr is gone (see report_line).
                super::report_line(format_args!(
                    "vireo: {}: {}",
                    record.level().as_str().to_lowercase(),
                    record.args()
                ));
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
