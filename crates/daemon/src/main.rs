//! `vireod`: the vireo management daemon (docs/daemon.md; its API: docs/api.md).
//!
//! Keeps persistent domain definitions, runs one `vireo-vmm` per running domain and
//! supervises it, and serves JSON-RPC on a unix socket whose permissions are the access
//! control. VMs outlive the daemon: a restarted vireod finds them again.

mod api;
mod claims;
mod domain_model;
mod events;
mod fsutil;
mod lock;
mod process;
mod server;
mod state;
mod supervisor;
mod vmm_client;

use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use clap::Parser;
use vireo_api::uri::Mode;
use vireo_api::ConnectUri;

use crate::state::{Daemon, Settings};

#[derive(Parser)]
#[command(name = "vireod", version, about = "The vireo management daemon")]
struct Args {
    /// Serve the host's domains (vireo:///system; the default for root).
    #[arg(long, conflicts_with = "session")]
    system: bool,
    /// Serve the calling user's domains (vireo:///session; the default for other users).
    #[arg(long)]
    session: bool,
    /// Keep every directory under DIR (DIR/etc/vireo, DIR/run/vireo, …); clients connect
    /// with -c 'vireo:///system?root=DIR'.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The VMM binary (default: vireo-vmm next to vireod, else in PATH; or $VIREO_VMM).
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Do not start autostart domains (autostart storage pools still start).
    #[arg(long)]
    no_autostart: bool,
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "vireod: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn init_logging() {
    let level = match std::env::var("VIREO_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(level);
    }
}

fn find_vmm(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit.or_else(|| std::env::var_os("VIREO_VMM").map(PathBuf::from)) {
        return p;
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("vireo-vmm")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("vireo-vmm")
}

/// `vireo-vmm --version`, if it runs.
fn probe_vmm(vmm: &Path) -> Option<String> {
    let run = |arg: &str| {
        Command::new(vmm)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let version = run("--version")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    version
}

/// Opens the storage pools (creating the `default` pool in the images directory the
/// first time) and starts the autostart ones. Storage trouble is logged, never fatal:
/// the daemon still manages domains.
fn open_storage(layout: &vireo_api::Layout) -> Result<vireo_storage::PoolManager, String> {
    let dirs = vireo_storage::StorageDirs {
        config_dir: layout.storage_dir(),
        state_dir: layout.run_dir.join("storage"),
        images_dir: layout.images_dir(),
    };
    let mgr = vireo_storage::PoolManager::open(dirs).map_err(|e| {
        log::error!("storage pools are unavailable: {e}");
        e.to_string()
    })?;
    for w in mgr.warnings() {
        log::warn!("{w}");
    }
    for (pool, e) in mgr.autostart_all() {
        log::error!("autostart of storage pool '{pool}' failed: {e}");
    }
    Ok(mgr)
}

/// The socket systemd passed (socket activation), if any.
fn activated_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds != 1 {
        return None;
    }
    // SAFETY: systemd passes the listening socket as fd 3 (SD_LISTEN_FDS_START) and
    // nothing else in this process uses it.
    Some(unsafe { UnixListener::from_raw_fd(3) })
}

/// Tells systemd (Type=notify) that the socket is ready.
fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
            let _ = sock.send_to(b"READY=1", path);
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // Everything the daemon creates is private to its user unless made otherwise.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let uri = match (&args.root, args.system, args.session) {
        (Some(root), _, _) => ConnectUri::with_root(root),
        (None, true, _) => ConnectUri::system(),
        (None, _, true) => ConnectUri::session(),
        // SAFETY: geteuid cannot fail.
        (None, false, false) if unsafe { libc::geteuid() } == 0 => ConnectUri::system(),
        _ => ConnectUri::session(),
    };
    let layout = uri.layout().map_err(|e| e.to_string())?;
    let dir_mode = if uri.mode == Mode::System && uri.root.is_none() {
        0o755
    } else {
        0o700
    };
    for dir in [
        &layout.config_dir,
        &layout.domains_dir(),
        &layout.state_dir,
        &layout.run_dir,
        &layout.vm_run_dir(),
        &layout.log_dir,
    ] {
        fsutil::create_dir(dir, dir_mode)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _lock = lock::PidLock::acquire(&layout.pidfile()).map_err(|e| e.to_string())?;

    let vmm_binary = find_vmm(args.vmm);
    let vmm_version = probe_vmm(&vmm_binary);
    if vmm_version.is_none() {
        log::warn!(
            "cannot run {} --version: starting domains will fail",
            vmm_binary.display()
        );
    }
    let storage = open_storage(&layout);
    let daemon = Arc::new(Daemon::new(
        Settings {
            layout: layout.clone(),
            uri: uri.to_string(),
            vmm_binary,
            vmm_version,
        },
        storage,
    ));
    daemon.load_definitions();
    supervisor::reattach_all(&daemon);

    let listener = match activated_listener() {
        Some(l) => l,
        None => {
            // We hold the lock, so a socket file left here is stale.
            let _ = std::fs::remove_file(&layout.socket);
            let l = UnixListener::bind(&layout.socket)
                .map_err(|e| format!("cannot listen on {}: {e}", layout.socket.display()))?;
            // The socket's permissions are the access control: owner only.
            std::fs::set_permissions(&layout.socket, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot chmod {}: {e}", layout.socket.display()))?;
            l
        }
    };
    log::info!("serving {} on {}", uri, layout.socket.display());
    notify_ready();
    if !args.no_autostart {
        let d = daemon.clone();
        std::thread::spawn(move || supervisor::autostart_all(&d));
    }
    server::serve(daemon, listener);
    Ok(())
}

fn main() -> ExitCode {
    init_logging();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vireod: error: {e}");
            ExitCode::FAILURE
        }
    }
}
