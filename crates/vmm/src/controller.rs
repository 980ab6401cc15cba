//! The main thread's event loop: one epoll over stop signals, the guest's power and failure
//! notifications, console input (stdin or console socket clients) and the control API
//! (listening socket and clients). It outlives guest resets: clients stay connected while
//! the VM is rebuilt.
//!
//! Every socket is non-blocking and edge-triggered; a connection marked `readable` is
//! served a bounded amount per loop turn so that no client can starve the others, and
//! output a client cannot take at once waits in a bounded backlog (see `conn.rs`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use vireo_devices::PowerRequest;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use vireo_devices::virtio::balloon::{BalloonControl, PAGE_SIZE as BALLOON_PAGE};
use vireo_devices::virtio::console::ConsoleInput;

use crate::api::{self, ApiError, Command, Event, Line, LineReader};
use crate::backends::Backends;
use crate::config::{ConsoleConfig, VmConfig, VmmOptions};
use crate::conn::{Conn, Listener, Overflow, Received};
use crate::console::{self, ConsoleHub};
use crate::signals::StopSignals;
use crate::vcpu_thread::GuestFailure;
use crate::vm_builder::{Platform, RunningVm};
use crate::VmmError;

const TOKEN_POWER: u64 = 1;
const TOKEN_FAILURE: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_STDIN: u64 = 4;
const TOKEN_API_LISTENER: u64 = 5;
const TOKEN_CONSOLE_LISTENER: u64 = 6;
const TOKEN_BOOT_MARKER: u64 = 7;
/// Client tokens: kind in the high half, a sequence number in the low half.
const API_CLIENT: u64 = 1 << 32;
const CONSOLE_CLIENT: u64 = 2 << 32;
const KIND_MASK: u64 = !0 << 32;

/// Console input held while the UART's FIFO is full; clients are read no faster.
const MAX_PENDING_INPUT: usize = 64 * 1024;
/// Replies and events waiting for an API client; a client that lets more pile up (it
/// does not read) is disconnected rather than making the VMM buffer without bound.
const API_BACKLOG: usize = 1 << 20;
/// Connected clients at most, per socket; more are refused.
const MAX_API_CLIENTS: usize = 64;
const MAX_CONSOLE_CLIENTS: usize = 16;
/// Bytes read from one client per loop turn.
const READ_BUDGET: usize = 64 * 1024;
/// How long `pause` waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final SHUTDOWN event and console output may take to reach clients.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// What ended one boot of the VM.
pub enum Wake {
    Power(PowerRequest),
    Failure(GuestFailure),
    Signal(libc::c_int),
    Quit,
}

struct ApiClient {
    conn: Conn,
    lines: LineReader,
}

pub struct Controller {
    epoll: Epoll,
    signals: StopSignals,
    api: Option<Listener>,
    api_clients: HashMap<u64, ApiClient>,
    console: Option<(Listener, Arc<ConsoleHub>)>,
    /// stdin is the console input and still open.
    stdin: bool,
    stdin_readable: bool,
    pending_input: VecDeque<u8>,
    next_client: u64,
    config: Value,
    guest_memory: u64,
    paused: bool,
    boots: u32,
    markers_at_boot: u64,
    boot_complete_sent: bool,
    /// The reset being processed came from `system_reset`.
    api_reset: bool,
    quit: bool,
    /// The virtio-console's input (`--console virtio`): console input goes there instead
    /// of the serial port.
    virtio_console_input: Option<Arc<ConsoleInput>>,
    /// The balloon (`--balloon`), for balloon-set and query-balloon.
    balloon: Option<Arc<BalloonControl>>,
}

fn epoll_add(epoll: &Epoll, fd: i32, events: EventSet, token: u64) -> std::io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
}

fn client_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Controller {
    /// Sets up the loop and listens on the API and console sockets.
    pub fn new(
        config: &VmConfig,
        options: &VmmOptions,
        signals: StopSignals,
    ) -> Result<Self, VmmError> {
        let epoll = Epoll::new()?;
        epoll_add(&epoll, signals.as_raw_fd(), EventSet::IN, TOKEN_SIGNAL)?;
        let api = match &options.api_socket {
            Some(path) => {
                let l = Listener::bind(path, "--api-socket").map_err(VmmError::Socket)?;
                epoll_add(&epoll, l.as_raw_fd(), EventSet::IN, TOKEN_API_LISTENER)?;
                Some(l)
            }
            None => None,
        };
        let console = match &config.console {
            ConsoleConfig::Socket(path) => {
                let l = Listener::bind(path, "console socket").map_err(VmmError::Socket)?;
                epoll_add(&epoll, l.as_raw_fd(), EventSet::IN, TOKEN_CONSOLE_LISTENER)?;
                Some((l, Arc::new(ConsoleHub::new())))
            }
            _ => None,
        };
        // A regular file or /dev/null on stdin is refused by epoll: then there is no
        // console input, which is fine.
        let stdin = config.console == ConsoleConfig::Stdio
            && epoll_add(
                &epoll,
                0,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                TOKEN_STDIN,
            )
            .is_ok();
        Ok(Self {
            epoll,
            signals,
            api,
            api_clients: HashMap::new(),
            console,
            stdin,
            stdin_readable: stdin,
            pending_input: VecDeque::new(),
            next_client: 0,
            config: serde_json::to_value(config).unwrap_or(Value::Null),
            guest_memory: config.memory,
            paused: options.start_paused,
            boots: 0,
            markers_at_boot: 0,
            boot_complete_sent: false,
            api_reset: false,
            quit: false,
            virtio_console_input: None,
            balloon: None,
        })
    }

    /// Takes the handles the control API and the console input need from the backends.
    pub fn attach_backends(&mut self, backends: &Backends) {
        self.virtio_console_input = backends.console_input.clone();
        self.balloon = backends.balloon.clone();
    }

    /// The console socket's clients, for the console output.
    pub fn console_hub(&self) -> Option<&Arc<ConsoleHub>> {
        self.console.as_ref().map(|(_, hub)| hub)
    }

    /// Watches the platform's power requests and boot-complete marker.
    pub fn watch_platform(&self, platform: &Platform) -> Result<(), VmmError> {
        epoll_add(
            &self.epoll,
            platform.power.eventfd().as_raw_fd(),
            EventSet::IN,
            TOKEN_POWER,
        )?;
        epoll_add(
            &self.epoll,
            platform.boot_marker.as_raw_fd(),
            EventSet::IN,
            TOKEN_BOOT_MARKER,
        )?;
        Ok(())
    }

    /// Whether the next VM should start with its vCPUs parked.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Call before building the VM for the next boot.
    pub fn begin_boot(&mut self, platform: &Platform) {
        self.boots += 1;
        self.markers_at_boot = platform
            .post_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .markers();
        self.boot_complete_sent = false;
    }

    /// Whether the reset just handled was asked for with `system_reset` (and forgets it).
    pub fn take_api_reset(&mut self) -> bool {
        std::mem::take(&mut self.api_reset)
    }

    /// Runs the event loop for one boot of `vm`, until something ends that boot.
    pub fn run_boot(&mut self, vm: &RunningVm, platform: &Platform) -> Result<Wake, VmmError> {
        let failed = vm.shared.failed.as_raw_fd();
        epoll_add(&self.epoll, failed, EventSet::IN, TOKEN_FAILURE)?;
        let wake = self.event_loop(vm, platform);
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, failed, EpollEvent::default());
        wake
    }

    fn event_loop(&mut self, vm: &RunningVm, platform: &Platform) -> Result<Wake, VmmError> {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            if let Some(req) = platform.power.pending() {
                return Ok(Wake::Power(req));
            }
            if let Some(f) = vm
                .shared
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                return Ok(Wake::Failure(f));
            }
            if self.quit {
                return Ok(Wake::Quit);
            }
            let timeout = if self.has_input_work() {
                0
            } else if !self.pending_input.is_empty() {
                10 // retry when the guest has drained its FIFO
            } else {
                -1
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                let (token, set) = (ev.data(), ev.event_set());
                match token {
                    TOKEN_SIGNAL => {
                        if let Some(sig) = self.signals.read() {
                            return Ok(Wake::Signal(sig));
                        }
                    }
                    TOKEN_STDIN => self.stdin_readable = true,
                    TOKEN_API_LISTENER => self.accept_api_clients(),
                    TOKEN_CONSOLE_LISTENER => self.accept_console_clients(),
                    TOKEN_BOOT_MARKER => self.check_boot_marker(platform),
                    // Power requests and failures are checked at the top of the loop.
                    TOKEN_POWER | TOKEN_FAILURE => {}
                    t if t & KIND_MASK == API_CLIENT => self.api_client_ready(t, set),
                    t if t & KIND_MASK == CONSOLE_CLIENT => self.console_client_ready(t, set),
                    _ => {}
                }
            }
            self.serve_api_clients(vm, platform);
            self.read_console_input();
            self.feed_serial(vm);
        }
    }

    /// Whether a client or stdin has input that can be taken now.
    fn has_input_work(&self) -> bool {
        if self.api_clients.values().any(|c| c.conn.readable) {
            return true;
        }
        if self.pending_input.len() >= MAX_PENDING_INPUT {
            return false;
        }
        (self.stdin && self.stdin_readable)
            || self
                .console_hub()
                .is_some_and(|hub| hub.clients().values().any(|c| c.readable))
    }

    fn next_token(&mut self, kind: u64) -> u64 {
        self.next_client = (self.next_client + 1) & !KIND_MASK;
        kind | self.next_client
    }

    fn accept_api_clients(&mut self) {
        loop {
            let stream = match self.api.as_ref().map(Listener::accept) {
                Some(Ok(Some(s))) => s,
                Some(Err(e)) => {
                    log::warn!("api socket: accept failed: {e}");
                    return;
                }
                _ => return,
            };
            let mut conn = Conn::new(stream);
            if self.api_clients.len() >= MAX_API_CLIENTS {
                let err =
                    ApiError::generic(format!("too many clients (at most {MAX_API_CLIENTS})"));
                let _ = conn.send(
                    &api::reply_error(None, &err),
                    API_BACKLOG,
                    Overflow::Disconnect,
                );
                continue;
            }
            let token = self.next_token(API_CLIENT);
            if let Err(e) = epoll_add(&self.epoll, conn.as_raw_fd(), client_events(), token) {
                log::warn!("api socket: cannot watch a client: {e}");
                continue;
            }
            log::debug!("api client {token:#x} connected");
            self.api_clients.insert(
                token,
                ApiClient {
                    conn,
                    lines: LineReader::new(api::MAX_REQUEST),
                },
            );
        }
    }

    fn accept_console_clients(&mut self) {
        loop {
            let stream = match self.console.as_ref().map(|(l, _)| l.accept()) {
                Some(Ok(Some(s))) => s,
                Some(Err(e)) => {
                    log::warn!("console socket: accept failed: {e}");
                    return;
                }
                _ => return,
            };
            let token = self.next_token(CONSOLE_CLIENT);
            let Some(hub) = self.console_hub() else {
                return;
            };
            let mut clients = hub.clients();
            if clients.len() >= MAX_CONSOLE_CLIENTS {
                log::warn!("console socket: refusing a client (at most {MAX_CONSOLE_CLIENTS})");
                continue;
            }
            let conn = Conn::new(stream);
            if let Err(e) = epoll_add(&self.epoll, conn.as_raw_fd(), client_events(), token) {
                log::warn!("console socket: cannot watch a client: {e}");
                continue;
            }
            clients.insert(token, conn);
        }
    }

    fn api_client_ready(&mut self, token: u64, set: EventSet) {
        let Some(c) = self.api_clients.get_mut(&token) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.conn.readable = true;
        }
        if set.contains(EventSet::OUT) && c.conn.flush().is_err() {
            self.drop_api_client(token, "write failed");
        }
    }

    fn console_client_ready(&mut self, token: u64, set: EventSet) {
        let Some(hub) = self.console_hub() else {
            return;
        };
        let mut clients = hub.clients();
        let Some(c) = clients.get_mut(&token) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) && c.flush().is_err() {
            clients.remove(&token);
        }
    }

    fn drop_api_client(&mut self, token: u64, why: &str) {
        if self.api_clients.remove(&token).is_some() {
            log::debug!("api client {token:#x} gone: {why}");
        }
    }

    /// Reads requests from every readable API client and answers them.
    fn serve_api_clients(&mut self, vm: &RunningVm, platform: &Platform) {
        let ready: Vec<u64> = self
            .api_clients
            .iter()
            .filter(|(_, c)| c.conn.readable)
            .map(|(&t, _)| t)
            .collect();
        for token in ready {
            let mut lines = Vec::new();
            let mut closed = false;
            if let Some(c) = self.api_clients.get_mut(&token) {
                let mut buf = [0u8; 16 * 1024];
                let mut budget = READ_BUDGET;
                while budget > 0 {
                    match c.conn.read(&mut buf) {
                        Received::Data(n) => {
                            c.lines.feed(&buf[..n], &mut lines);
                            budget = budget.saturating_sub(n);
                        }
                        Received::WouldBlock => break,
                        Received::Closed => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            for line in lines {
                if self.quit {
                    break; // nothing after quit is run
                }
                let (reply, events) = self.execute(line, vm, platform);
                if let Some(reply) = reply {
                    self.send_to(token, &reply);
                }
                for e in events {
                    self.emit(e);
                }
            }
            if closed {
                self.drop_api_client(token, "disconnected");
            }
        }
    }

    fn send_to(&mut self, token: u64, bytes: &[u8]) {
        let Some(c) = self.api_clients.get_mut(&token) else {
            return;
        };
        if let Err(e) = c.conn.send(bytes, API_BACKLOG, Overflow::Disconnect) {
            self.drop_api_client(token, &e.to_string());
        }
    }

    /// Sends `event` to every API client.
    pub fn emit(&mut self, event: Event) {
        log::debug!("event {} {}", event.name(), event.data());
        let bytes = event.encode(SystemTime::now());
        let tokens: Vec<u64> = self.api_clients.keys().copied().collect();
        for token in tokens {
            self.send_to(token, &bytes);
        }
    }

    /// Handles one request line: the reply (none for a blank line) and the events it
    /// caused, to send after the reply.
    fn execute(
        &mut self,
        line: Line,
        vm: &RunningVm,
        platform: &Platform,
    ) -> (Option<Vec<u8>>, Vec<Event>) {
        let text = match line {
            Line::TooLong => {
                let err = ApiError::generic(format!(
                    "request longer than {} bytes; skipped up to its newline",
                    api::MAX_REQUEST
                ));
                return (Some(api::reply_error(None, &err)), vec![]);
            }
            Line::Text(t) if t.iter().all(u8::is_ascii_whitespace) => return (None, vec![]),
            Line::Text(t) => t,
        };
        let req = match api::parse_request(&text) {
            Ok(r) => r,
            Err(bad) => return (Some(api::reply_error(bad.id, &bad.error)), vec![]),
        };
        let mut events = Vec::new();
        let reply = match self.command(req.command, vm, platform, &mut events) {
            Ok(value) => api::reply_ok(req.id, value),
            Err(e) => api::reply_error(req.id, &e),
        };
        (Some(reply), events)
    }

    fn command(
        &mut self,
        command: Command,
        vm: &RunningVm,
        platform: &Platform,
        events: &mut Vec<Event>,
    ) -> Result<Value, ApiError> {
        log::debug!("api command {}", command.name());
        match command {
            Command::QueryStatus => Ok(json!({
                "status": if self.paused { "paused" } else { "running" },
                "boots": self.boots,
                "pid": std::process::id(),
            })),
            Command::QueryConfig => Ok(self.config.clone()),
            Command::QueryStats => Ok(self.stats(vm)),
            Command::QueryCpusFast => Ok(cpus(vm)),
            Command::Pause => {
                if !self.paused {
                    if let Err(e) = vm.shared.control.pause(&vm.threads, PAUSE_TIMEOUT) {
                        vm.shared.control.resume();
                        return Err(ApiError::generic(format!("cannot pause: {e}")));
                    }
                    self.paused = true;
                    events.push(Event::Stop);
                }
                Ok(json!({}))
            }
            Command::Resume => {
                if self.paused {
                    vm.shared.control.resume();
                    self.paused = false;
                    events.push(Event::Resume);
                }
                Ok(json!({}))
            }
            Command::SystemPowerdown => {
                vm.ged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notify_power_button();
                events.push(Event::Powerdown);
                Ok(json!({}))
            }
            Command::SystemReset => {
                // The same path as a guest-initiated reset: the loop ends this boot and
                // the VM is rebuilt (RESET is sent then).
                self.api_reset = true;
                platform.power.request(PowerRequest::Reset);
                Ok(json!({}))
            }
            Command::Quit => {
                self.quit = true;
                Ok(json!({}))
            }
            Command::QmpCapabilities => Ok(json!({})),
            Command::BalloonSet { target_bytes } => self.balloon_set(target_bytes),
            Command::QueryBalloon => self.query_balloon(),
        }
    }

    fn stats(&self, vm: &RunningVm) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let states = vm.shared.control.vcpu_states();
        let vcpus: Vec<Value> = vm
            .shared
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "index": i,
                    "state": states.get(i).map(|s| s.as_str()).unwrap_or("exited"),
                    "exits": s.exits.load(Relaxed),
                    "io_exits": s.io_exits.load(Relaxed),
                    "mmio_exits": s.mmio_exits.load(Relaxed),
                })
            })
            .collect();
        let (clients, dropped) = match self.console_hub() {
            Some(hub) => (hub.clients().len(), hub.dropped()),
            None => (0, 0),
        };
        json!({
            "status": if self.paused { "paused" } else { "running" },
            "boots": self.boots,
            "vcpus": vcpus,
            "memory": {
                "guest_bytes": self.guest_memory,
                "rss_bytes": resident_bytes(),
            },
            "console": {
                "clients": clients,
                "dropped_bytes": dropped,
                "pending_input_bytes": self.pending_input.len(),
            },
        })
    }

    /// BOOT_COMPLETE once per boot, on the first marker written during it.
    fn check_boot_marker(&mut self, platform: &Platform) {
        let _ = platform.boot_marker.read();
        let markers = platform
            .post_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .markers();
        if markers > self.markers_at_boot && !self.boot_complete_sent {
            self.boot_complete_sent = true;
            self.emit(Event::BootComplete { boot: self.boots });
        }
    }

    /// Reads console input (stdin or console clients) while there is room for it.
    fn read_console_input(&mut self) {
        let mut buf = [0u8; 4096];
        if self.stdin && self.stdin_readable {
            let room = MAX_PENDING_INPUT.saturating_sub(self.pending_input.len());
            // stdin stays blocking (it is shared with the shell): read only what is there.
            if room > 0 && !console::stdin_ready() {
                self.stdin_readable = false;
            } else if room > 0 {
                let want = room.min(buf.len());
                match console::read_stdin(&mut buf[..want]) {
                    Ok(0) => {
                        // EOF: the guest keeps running without console input.
                        let _ = self
                            .epoll
                            .ctl(ControlOperation::Delete, 0, EpollEvent::default());
                        self.stdin = false;
                    }
                    Ok(n) => self.pending_input.extend(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.stdin_readable = false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => self.stdin = false,
                }
            }
        }
        let Some((_, hub)) = &self.console else {
            return;
        };
        let mut clients = hub.clients();
        let mut gone = Vec::new();
        for (&token, c) in clients.iter_mut().filter(|(_, c)| c.readable) {
            let room = MAX_PENDING_INPUT.saturating_sub(self.pending_input.len());
            if room == 0 {
                break;
            }
            let want = room.min(buf.len());
            match c.read(&mut buf[..want]) {
                Received::Data(n) => self.pending_input.extend(&buf[..n]),
                Received::WouldBlock => {}
                Received::Closed => gone.push(token),
            }
        }
        for token in gone {
            clients.remove(&token);
        }
    }

    /// Moves pending console input into the UART as far as its FIFO has room (or into
    /// the virtio-console's input buffer when the console is there).
    fn feed_serial(&mut self, vm: &RunningVm) {
        if self.pending_input.is_empty() {
            return;
        }
        let bytes = self.pending_input.make_contiguous();
        let taken = match &self.virtio_console_input {
            Some(input) => input.enqueue(bytes),
            None => vm
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes),
        };
        self.pending_input.drain(..taken);
    }

    fn balloon(&self) -> Result<&Arc<BalloonControl>, ApiError> {
        self.balloon.as_ref().ok_or_else(|| {
            ApiError::generic("this VM has no balloon device (start it with --balloon)")
        })
    }

    /// `balloon-set`: the guest should keep `target` bytes; the balloon takes the rest.
    fn balloon_set(&self, target: u64) -> Result<Value, ApiError> {
        let balloon = self.balloon()?;
        if target > self.guest_memory {
            return Err(ApiError::generic(format!(
                "balloon-set: target-bytes {target} is more than the VM's memory ({} bytes)",
                self.guest_memory
            )));
        }
        let pages = (self.guest_memory - target) / BALLOON_PAGE;
        balloon.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
        Ok(json!({}))
    }

    /// `query-balloon`: sizes in bytes and the guest's last statistics (a fresh set is
    /// asked for at each query and arrives for the next one).
    fn query_balloon(&self) -> Result<Value, ApiError> {
        let balloon = self.balloon()?;
        let info = balloon.info();
        balloon.request_stats();
        let inflated = u64::from(info.actual_pages) * BALLOON_PAGE;
        let target = u64::from(info.target_pages) * BALLOON_PAGE;
        Ok(json!({
            "actual-bytes": self.guest_memory.saturating_sub(inflated),
            "target-bytes": self.guest_memory.saturating_sub(target),
            "balloon-bytes": inflated,
            "stats": info.stats.as_ref().map(|s| &s.values),
            "stats-updated": info.stats.as_ref().map(|s| s.updated),
        }))
    }

    /// Sends the final event, gives clients a moment to receive it (and the last console
    /// output), then closes every socket and removes the socket files.
    pub fn finish(mut self, event: Event) {
        self.emit(event);
        let deadline = Instant::now() + FINAL_FLUSH;
        loop {
            self.api_clients
                .retain(|_, c| c.conn.flush().is_ok() && c.conn.backlog() > 0);
            if let Some(hub) = self.console_hub() {
                hub.clients()
                    .retain(|_, c| c.flush().is_ok() && c.backlog() > 0);
            }
            let waiting = !self.api_clients.is_empty()
                || self
                    .console_hub()
                    .is_some_and(|hub| !hub.clients().is_empty());
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// `query-cpus-fast`: every vCPU's index, thread id and state, and while it is parked its
/// instruction pointer, read by the vCPU's own thread.
fn cpus(vm: &RunningVm) -> Value {
    let control = &vm.shared.control;
    let rips = control.on_parked(
        |vcpu| vcpu.fd().get_regs().map(|r| r.rip).ok(),
        PAUSE_TIMEOUT,
    );
    let states = control.vcpu_states();
    let tids = control.thread_ids();
    let cpus: Vec<Value> = (0..states.len())
        .map(|i| {
            let mut cpu = json!({
                "cpu-index": i,
                "thread-id": tids.get(i).copied().unwrap_or(0),
                "state": states[i].as_str(),
            });
            if let Some(Some(Some(rip))) = rips.get(i) {
                // A string: JSON numbers above 2^53 lose precision in many parsers.
                cpu["rip"] = json!(format!("{rip:#x}"));
            }
            cpu
        })
        .collect();
    Value::Array(cpus)
}

/// The VMM's resident set size, from /proc/self/statm (0 if unavailable).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}
