//! One `vireo-vmm` process per running domain: spawning it, watching it, learning why it
//! ended, honouring `on_poweroff`/`on_crash`, and finding it again after a daemon restart.
//!
//! * start: the VMM gets its config as JSON plus its sockets, logs and exit file under
//!   `run/vm/NAME/`; it runs in its own session (setsid) with stdio appended to
//!   `log/NAME.log`, so it outlives the daemon. The daemon waits until the VMM answers
//!   `query-status`, then records `state.json` (pid, pid start time, sockets) atomically.
//! * watch: a thread per VMM polls a pidfd (works for children and for VMMs adopted after
//!   a restart) and the VMM's event connection.
//! * end: the exit file written by the VMM says why (poweroff, reset, quit, signal, guest
//!   failure); without one (SIGKILL), the wait status does.
//! * restart: `state.json` files are read back; a VMM whose pid and start time still match
//!   is adopted, one that ended meanwhile is finished from its exit file.

use std::fs::OpenOptions;
use std::io::{self, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use vireo_api::protocol::domain::DomainState;
use vireo_api::uri::MAX_SOCKET_PATH;
use vireo_api::{ErrorKind, RpcError};

use crate::domain_model::{self, Domain};
use crate::events::now_us;
use crate::fsutil;
use crate::process;
use crate::state::{system_error, Daemon, DomState, Entry, RunState, Running, StopRequest};
use crate::vmm_client::{self, ExitInfo, VmmClient};

/// How long a VMM may take to answer its first `query-status`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `destroy` waits after `quit` before SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

fn vmm_error(msg: String) -> RpcError {
    RpcError::new(ErrorKind::VmmError, msg)
}

/// Starts `domain` for `entry` (whose lock the caller holds as `st`) and publishes the
/// `started` event with `detail`. Returns the id.
pub fn start(
    d: &Arc<Daemon>,
    entry: &Arc<Entry>,
    st: &mut DomState,
    domain: Domain,
    transient: bool,
    paused: bool,
    detail: &str,
) -> Result<u32, RpcError> {
    if st.run.is_some() {
        return Err(RpcError::new(
            ErrorKind::OperationInvalid,
            format!("domain '{}' is already running", entry.name),
        ));
    }
    let dir = d.vm_dir(&entry.name);
    fsutil::create_dir(&dir, 0o700).map_err(|e| system_error("create", &dir, e))?;
    for stale in [
        "api.sock",
        "console.sock",
        "exit.json",
        "state.json",
        "config.json",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let layout = d.layout();
    fsutil::create_dir(&layout.log_dir, 0o700)
        .map_err(|e| system_error("create", &layout.log_dir, e))?;
    let api_socket = dir.join("api.sock");
    let console_socket = dir.join("console.sock");
    for sock in [&api_socket, &console_socket] {
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RpcError::new(
                ErrorKind::SystemError,
                format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter domain name or root directory",
                    sock.display()
                ),
            ));
        }
    }
    let exit_file = dir.join("exit.json");
    let config_file = dir.join("config.json");
    let console_log = layout.log_dir.join(format!("{}.console.log", entry.name));
    let vmm_log = layout.log_dir.join(format!("{}.log", entry.name));
    let config = domain_model::vm_config(&domain, console_socket.clone(), console_log.clone())
        .map_err(|e| {
            RpcError::new(
                ErrorKind::NotSupported,
                format!("cannot start domain '{}': {e}", entry.name),
            )
        })?;
    // Its disks (and kernel, initrd) must not be changed by a storage operation while the
    // domain runs.
    let claim = d
        .claims
        .claim_domain(&entry.name, &domain_model::files_in_use(&domain))
        .map_err(|e| {
            RpcError::new(
                ErrorKind::OperationInvalid,
                format!("cannot start domain '{}': {e}", entry.name),
            )
        })?;
    let json = serde_json::to_vec_pretty(&config)
        .map_err(|e| RpcError::new(ErrorKind::InternalError, format!("VMM config: {e}")))?;
    fsutil::atomic_write(&config_file, &json)
        .map_err(|e| system_error("write", &config_file, e))?;

    let mut cmd = Command::new(&d.settings.vmm_binary);
    // The console settings are in the config too; as flags they show in `ps`.
    cmd.arg("--config").arg(&config_file);
    cmd.arg("--api-socket").arg(&api_socket);
    cmd.arg("--console")
        .arg(format!("socket:{}", console_socket.display()));
    cmd.arg("--console-log").arg(&console_log);
    cmd.arg("--exit-file").arg(&exit_file);
    if paused {
        cmd.arg("--start-paused");
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&vmm_log)
        .map_err(|e| system_error("open", &vmm_log, e))?;
    {
        use std::io::Write;
        let _ = writeln!(
            &log,
            "vireod: starting domain '{}' ({} µs since the epoch)",
            entry.name,
            now_us()
        );
    }
    let log2 = log
        .try_clone()
        .map_err(|e| system_error("open", &vmm_log, e))?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it puts the
    // VMM in its own session so that it outlives the daemon and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        vmm_error(format!(
            "cannot run {}: {e}",
            d.settings.vmm_binary.display()
        ))
    })?;
    let pid = child.id() as i32;

    // Wait until the VMM answers (or fails).
    let vmm = VmmClient::new(&api_socket);
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Ok(Some(exit)) = child.try_wait() {
            let info = ExitInfo::read(&exit_file);
            let clean = match &info {
                Some(i) => matches!(i.reason.as_str(), "poweroff" | "reset"),
                None => exit.success(),
            };
            if clean {
                // The guest ran and powered off before the VMM could be asked anything.
                let id = d.allocate_id();
                d.publish(entry, "started", detail, "");
                st.status = DomainState::Shutoff;
                st.reason = "shutdown".into();
                cleanup_vm_dir(&dir);
                d.publish(entry, "stopped", "shutdown", "");
                return Ok(id);
            }
            let why = info
                .map(|i| i.detail)
                .filter(|s| !s.is_empty())
                .or_else(|| fsutil::last_line(&vmm_log))
                .unwrap_or_else(|| exit.to_string());
            return Err(vmm_error(format!(
                "domain '{}' failed to start: {}",
                entry.name,
                why.trim_start_matches("vireo: error: ")
            )));
        }
        if let Ok(reply) = vmm.execute("query-status", json!({})) {
            break reply
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("running")
                .to_string();
        }
        if Instant::now() > deadline {
            process::kill(pid, libc::SIGKILL);
            let _ = child.wait();
            return Err(vmm_error(format!(
                "domain '{}' failed to start: the VMM did not answer within {}s (see {})",
                entry.name,
                START_TIMEOUT.as_secs(),
                vmm_log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(child); // reaped by the monitor thread

    let id = d.allocate_id();
    let run_state = RunState {
        name: entry.name.clone(),
        uuid: entry.uuid.clone(),
        id,
        pid,
        pid_start: process::start_time(pid).unwrap_or(0),
        started_at_us: now_us(),
        transient,
        xml: domain.to_xml(),
        api_socket: Some(api_socket),
        console_socket: Some(console_socket),
        exit_file: Some(exit_file),
        console_log,
        vmm_log,
    };
    if let Err(e) = write_run_state(d, &run_state) {
        log::error!(
            "{e}; domain '{}' will not be re-attached after a daemon restart",
            entry.name
        );
    }
    let pidfd =
        process::pidfd_open(pid).map_err(|e| vmm_error(format!("pidfd_open({pid}): {e}")))?;
    let events = vmm.connect().ok();
    claim.keep();
    st.run = Some(Running {
        state: run_state,
        domain,
        vmm: Some(vmm),
        stop_request: None,
    });
    st.status = if status == "paused" {
        DomainState::Paused
    } else {
        DomainState::Running
    };
    st.reason = if paused {
        "user".into()
    } else {
        "booted".into()
    };
    entry.id.store(id, Ordering::Relaxed);
    entry.changed.notify_all();
    d.publish(entry, "started", detail, "");
    spawn_monitor(d, entry, pid, true, pidfd, events);
    Ok(id)
}

fn write_run_state(d: &Daemon, rs: &RunState) -> Result<(), String> {
    let path = d.vm_dir(&rs.name).join("state.json");
    let json = serde_json::to_vec_pretty(rs).map_err(|e| e.to_string())?;
    fsutil::atomic_write(&path, &json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn spawn_monitor(
    d: &Arc<Daemon>,
    entry: &Arc<Entry>,
    pid: i32,
    is_child: bool,
    pidfd: OwnedFd,
    events: Option<UnixStream>,
) {
    let d = d.clone();
    let entry = entry.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("vmm-{pid}"))
        .spawn(move || monitor(d, entry, pid, is_child, pidfd, events));
    if let Err(e) = spawned {
        log::error!("cannot start the monitor thread of VMM {pid}: {e}");
    }
}

/// Waits for the VMM to end, handling its events meanwhile.
fn monitor(
    d: Arc<Daemon>,
    entry: Arc<Entry>,
    pid: i32,
    is_child: bool,
    pidfd: OwnedFd,
    events: Option<UnixStream>,
) {
    let mut events = events.map(BufReader::new);
    let mut line = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: events.as_ref().map_or(-1, |e| e.get_ref().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("poll on VMM {pid}: {}", io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if fds[1].revents != 0 {
            if let Some(reader) = events.as_mut() {
                // Handle every complete line buffered so far.
                match vireo_api::framing::read_line(reader, &mut line, 4 << 20) {
                    Ok(true) => {
                        if let Some(ev) = vmm_client::parse_event(&line) {
                            on_vmm_event(&d, &entry, pid, &ev);
                        }
                        while reader.buffer().contains(&b'\n') {
                            match vireo_api::framing::read_line(reader, &mut line, 4 << 20) {
                                Ok(true) => {
                                    if let Some(ev) = vmm_client::parse_event(&line) {
                                        on_vmm_event(&d, &entry, pid, &ev);
                                    }
                                }
                                _ => break,
                            }
                        }
                    }
                    // The VMM closed the connection: it is exiting; the pidfd says when.
                    _ => events = None,
                }
            }
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    let status = if is_child { process::reap(pid) } else { None };
    let st = entry.lock();
    if st.run.as_ref().map(|r| r.state.pid) != Some(pid) {
        return;
    }
    finish(&d, &entry, st, status);
}

fn on_vmm_event(d: &Daemon, entry: &Entry, pid: i32, ev: &vmm_client::VmmEvent) {
    let mut st = entry.lock();
    if st.run.as_ref().map(|r| r.state.pid) != Some(pid) {
        return;
    }
    match ev.event.as_str() {
        "STOP" if st.status != DomainState::Paused => {
            st.status = DomainState::Paused;
            st.reason = "user".into();
            d.publish(entry, "suspended", "paused", "");
        }
        "RESUME" if st.status == DomainState::Paused => {
            st.status = DomainState::Running;
            st.reason = "unpaused".into();
            d.publish(entry, "resumed", "unpaused", "");
        }
        "RESET" => d.publish(entry, "rebooted", "reset", ""),
        _ => log::debug!(
            "domain '{}': VMM event {} {}",
            entry.name,
            ev.event,
            ev.data
        ),
    }
}

/// What follows a VMM's end.
#[derive(Debug, PartialEq, Eq)]
enum After {
    Nothing,
    Restart,
}

/// Decides the state a domain is left in when its VMM ended.
fn classify(
    domain: &Domain,
    request: Option<StopRequest>,
    exit: Option<&ExitInfo>,
    wait_status: Option<i32>,
    vmm_log: &Path,
) -> (DomainState, String, &'static str, After) {
    let on_poweroff = || match domain_model::on_poweroff_restarts(domain) {
        true => After::Restart,
        false => After::Nothing,
    };
    let on_crash = || match domain_model::on_crash_restarts(domain) {
        true => After::Restart,
        false => After::Nothing,
    };
    if request == Some(StopRequest::Destroy) {
        return (
            DomainState::Shutoff,
            "destroyed".into(),
            "destroyed",
            After::Nothing,
        );
    }
    if let Some(exit) = exit {
        return match exit.reason.as_str() {
            "poweroff" => (
                DomainState::Shutoff,
                "shutdown".into(),
                "shutdown",
                on_poweroff(),
            ),
            // The guest rebooted with on_reboot=destroy.
            "reset" => (
                DomainState::Shutoff,
                "shutdown".into(),
                "shutdown",
                After::Nothing,
            ),
            "quit" | "signal" => (
                DomainState::Shutoff,
                "destroyed".into(),
                "destroyed",
                After::Nothing,
            ),
            // libvirt's reason for a pvpanic report.
            "guest-panicked" => (
                DomainState::Crashed,
                "panicked".into(),
                "crashed",
                on_crash(),
            ),
            other => {
                let why = if exit.detail.is_empty() {
                    format!("{other} (exit status {})", exit.status)
                } else {
                    format!("{other}: {}", exit.detail)
                };
                (DomainState::Crashed, why, "crashed", on_crash())
            }
        };
    }
    match wait_status {
        Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => (
            DomainState::Shutoff,
            "shutdown".into(),
            "shutdown",
            on_poweroff(),
        ),
        Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) > 128 => (
            DomainState::Shutoff,
            "destroyed".into(),
            "destroyed",
            After::Nothing,
        ),
        Some(s) if libc::WIFEXITED(s) => {
            let last = fsutil::last_line(vmm_log).unwrap_or_default();
            let why = format!(
                "vireo-vmm failed ({}): {}",
                process::describe_status(s),
                last.trim_start_matches("vireo: error: ")
            );
            (DomainState::Crashed, why, "crashed", on_crash())
        }
        Some(s) => (
            DomainState::Crashed,
            format!("vireo-vmm killed by {}", process::describe_status(s)),
            "crashed",
            on_crash(),
        ),
        None => (
            DomainState::Crashed,
            "vireo-vmm ended without an exit file (killed by a signal?)".into(),
            "crashed",
            on_crash(),
        ),
    }
}

/// Records the end of the domain's VMM (the caller holds the entry lock as `st`).
fn finish(
    d: &Arc<Daemon>,
    entry: &Arc<Entry>,
    mut st: MutexGuard<'_, DomState>,
    wait_status: Option<i32>,
) {
    let Some(run) = st.run.take() else {
        return;
    };
    d.claims.release_domain(&entry.name);
    let exit = run.state.exit_file.as_deref().and_then(ExitInfo::read);
    let (status, reason, detail, after) = classify(
        &run.domain,
        run.stop_request,
        exit.as_ref(),
        wait_status,
        &run.state.vmm_log,
    );
    cleanup_vm_dir(&d.vm_dir(&entry.name));
    entry.id.store(0, Ordering::Relaxed);
    st.status = status;
    st.reason = reason.clone();
    let message = if status == DomainState::Crashed {
        reason
    } else {
        String::new()
    };
    d.publish(entry, "stopped", detail, &message);
    if after == After::Restart {
        let domain = st.def.clone().unwrap_or(run.domain);
        let transient = st.def.is_none();
        match start(d, entry, &mut st, domain, transient, false, "restarted") {
            Ok(_) => {}
            Err(e) => log::error!("cannot restart domain '{}': {e}", entry.name),
        }
    }
    entry.changed.notify_all();
    if st.is_gone() {
        st.removed = true;
        drop(st);
        let mut map = d.map();
        if map.get(&entry.name).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(&entry.name);
        }
    }
}

fn cleanup_vm_dir(dir: &Path) {
    // state.json first: once it is gone, a restarted daemon no longer looks for the VMM.
    if let Err(e) = fsutil::remove_durably(&dir.join("state.json")) {
        log::warn!("cannot remove {}/state.json: {e}", dir.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Asks the VMM to stop now and waits until it has.
pub fn destroy<'a>(
    entry: &'a Entry,
    mut st: MutexGuard<'a, DomState>,
) -> Result<MutexGuard<'a, DomState>, RpcError> {
    let name = entry.name.clone();
    let run = st
        .run
        .as_mut()
        .ok_or_else(|| crate::state::not_running(&name))?;
    run.stop_request = Some(StopRequest::Destroy);
    let pid = run.state.pid;
    let asked = match &run.vmm {
        Some(vmm) => match vmm.execute("quit", json!({})) {
            Ok(_) => true,
            // The VMM may close the connection as it exits: not a failure.
            Err(vmm_client::VmmError::Io(_)) => true,
            Err(e) => {
                log::warn!("domain '{name}': quit failed ({e}); sending SIGTERM");
                false
            }
        },
        None => false,
    };
    if !asked {
        process::kill(pid, libc::SIGTERM);
    }
    let gone = |st: &DomState| st.run.as_ref().map(|r| r.state.pid) != Some(pid);
    for (timeout, escalate) in [(QUIT_TIMEOUT, true), (Duration::from_secs(10), false)] {
        let (guard, _) = entry
            .changed
            .wait_timeout_while(st, timeout, |st| !gone(st))
            .unwrap_or_else(|e| e.into_inner());
        st = guard;
        if gone(&st) {
            return Ok(st);
        }
        if escalate {
            log::warn!(
                "domain '{name}': VMM {pid} did not stop within {}s; SIGKILL",
                timeout.as_secs()
            );
            process::kill(pid, libc::SIGKILL);
        }
    }
    Err(vmm_error(format!(
        "domain '{name}': VMM {pid} did not stop after SIGKILL"
    )))
}

/// Sends a command to the domain's VMM.
pub fn command(entry: &Entry, st: &DomState, cmd: &str) -> Result<serde_json::Value, RpcError> {
    command_with(entry, st, cmd, json!({}))
}

/// [`command`] with arguments.
pub fn command_with(
    entry: &Entry,
    st: &DomState,
    cmd: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, RpcError> {
    let run = st.running(&entry.name)?;
    let vmm = run.vmm.as_ref().ok_or_else(|| {
        RpcError::new(
            ErrorKind::NotSupported,
            format!("{cmd} needs the VMM control API, which this vireo-vmm does not have"),
        )
    })?;
    vmm.execute(cmd, arguments)
        .map_err(|e| vmm_error(format!("domain '{}': {e}", entry.name)))
}

/// Finds the VMMs of a previous daemon instance: adopts the live ones, finishes the others.
pub fn reattach_all(d: &Arc<Daemon>) {
    let Ok(dirs) = std::fs::read_dir(d.layout().vm_run_dir()) else {
        return;
    };
    for dir in dirs.flatten() {
        let path = dir.path().join("state.json");
        let rs: RunState = match fsutil::read_bounded(&path, crate::state::MAX_XML * 2)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        {
            Ok(rs) => rs,
            Err(e) => {
                if path.exists() {
                    log::error!("ignoring {}: {e}", path.display());
                } else {
                    let _ = std::fs::remove_dir_all(dir.path());
                }
                continue;
            }
        };
        if let Err(e) = reattach(d, rs) {
            log::error!("cannot re-attach {}: {e}", path.display());
        }
    }
}

fn reattach(d: &Arc<Daemon>, rs: RunState) -> Result<(), String> {
    let domain = Domain::from_xml(&rs.xml).map_err(|e| e.to_string())?.domain;
    let disks = domain_model::files_in_use(&domain);
    let entry = {
        let mut map = d.map();
        match map.get(&rs.name) {
            Some(e) if e.uuid == rs.uuid => e.clone(),
            Some(_) => {
                return Err(format!(
                    "domain '{}' is now defined with another UUID",
                    rs.name
                ))
            }
            None => {
                let e = Arc::new(Entry::new(&rs.name, &rs.uuid, None, false));
                map.insert(rs.name.clone(), e.clone());
                e
            }
        }
    };
    let mut st = entry.lock();
    let pid = rs.pid;
    let alive = process::is_alive(pid, rs.pid_start);
    let vmm = rs.api_socket.as_deref().map(VmmClient::new);
    d.reserve_id(rs.id);
    entry.id.store(rs.id, Ordering::Relaxed);
    let status = if alive {
        vmm.as_ref()
            .and_then(|v| v.execute("query-status", json!({})).ok())
            .and_then(|r| r.get("status").and_then(|s| s.as_str()).map(str::to_string))
    } else {
        None
    };
    st.run = Some(Running {
        state: rs.clone(),
        domain,
        vmm: vmm.clone(),
        stop_request: None,
    });
    if !alive {
        log::info!(
            "domain '{}': its VMM {pid} ended while vireod was not running",
            rs.name
        );
        finish(d, &entry, st, None);
        return Ok(());
    }
    st.status = if status.as_deref() == Some("paused") {
        DomainState::Paused
    } else {
        DomainState::Running
    };
    st.reason = "booted".into();
    let pidfd = match process::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            finish(d, &entry, st, None);
            return Err(format!("pidfd_open({pid}): {e}"));
        }
    };
    d.claims.record_domain(&entry.name, &disks);
    let events = vmm.as_ref().and_then(|v| v.connect().ok());
    log::info!("domain '{}': re-attached to VMM {pid}", rs.name);
    drop(st);
    spawn_monitor(d, &entry, pid, false, pidfd, events);
    Ok(())
}

/// Starts every autostart domain that is not running.
pub fn autostart_all(d: &Arc<Daemon>) {
    let entries: Vec<_> = d.map().values().cloned().collect();
    for entry in entries {
        let mut st = entry.lock();
        if !st.autostart || st.run.is_some() {
            continue;
        }
        let Some(def) = st.def.clone() else { continue };
        if let Err(e) = start(d, &entry, &mut st, def, false, false, "autostart") {
            log::error!("autostart of domain '{}' failed: {e}", entry.name);
        }
    }
}
