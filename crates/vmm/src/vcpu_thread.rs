//! The run loop of one vCPU thread: KVM_RUN, dispatch of I/O and MMIO exits to the buses,
//! and reporting of everything that ends the VM; and how the VMM pauses, resumes and stops
//! those threads ([`VcpuControl`]).
//!
//! Pausing really stops the guest: the VMM sets the request, kicks every thread out of
//! KVM_RUN with the real-time signal (whose handler sets `immediate_exit`), and waits until
//! each thread has *parked* on a condition variable. Before parking, a thread that last
//! left KVM_RUN for port or MMIO I/O enters KVM_RUN once more with `immediate_exit` set, so
//! that KVM completes that instruction without running the guest: a paused vCPU's
//! registers are then consistent, which is what saving its state (snapshots, migration)
//! needs.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use vireo_devices::{Bus, PowerEvents, PowerRequest};
use vireo_hypervisor::Vcpu;
use vmm_sys_util::eventfd::EventFd;

/// Why the guest cannot continue: a message naming the exit and a register dump.
#[derive(Debug, Clone)]
pub struct GuestFailure {
    pub vcpu: u32,
    pub reason: String,
    pub registers: String,
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {}: {}\n{}", self.vcpu, self.reason, self.registers)
    }
}

/// What the VMM asks of the vCPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunRequest {
    Run = 0,
    Pause = 1,
    Stop = 2,
}

/// Where one vCPU thread is, as seen by the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    /// Parked: out of KVM_RUN, its last instruction completed.
    Paused,
    /// Left its loop (stopped, or the guest powered off, reset or failed).
    Exited,
}

impl VcpuState {
    pub fn as_str(self) -> &'static str {
        match self {
            VcpuState::Running => "running",
            VcpuState::Paused => "paused",
            VcpuState::Exited => "exited",
        }
    }
}

/// Work for a parked vCPU thread (see [`VcpuControl::on_parked`]).
type VcpuJob = Box<dyn FnOnce(&mut Vcpu) + Send>;

/// What the control knows of one vCPU thread.
struct Slot {
    state: VcpuState,
    /// The thread's kernel thread id (0 until it started).
    tid: i32,
    job: Option<VcpuJob>,
}

/// How the VMM runs, pauses and stops the vCPU threads of one VM.
pub struct VcpuControl {
    /// The current [`RunRequest`]; read by the vCPU loops without locking.
    request: AtomicU8,
    slots: Mutex<Vec<Slot>>,
    changed: Condvar,
}

impl VcpuControl {
    /// Control for `vcpus` threads that start running, or parked if `paused`.
    pub fn new(vcpus: usize, paused: bool) -> Self {
        let request = if paused {
            RunRequest::Pause
        } else {
            RunRequest::Run
        };
        // Threads that start parked count as paused from the start: they have not run a
        // guest instruction, so their state is as consistent as a parked thread's (a job
        // for them runs as soon as they park).
        let state = if paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        Self {
            request: AtomicU8::new(request as u8),
            slots: Mutex::new(
                (0..vcpus)
                    .map(|_| Slot {
                        state,
                        tid: 0,
                        job: None,
                    })
                    .collect(),
            ),
            changed: Condvar::new(),
        }
    }

    pub fn request(&self) -> RunRequest {
        match self.request.load(Ordering::Acquire) {
            0 => RunRequest::Run,
            1 => RunRequest::Pause,
            _ => RunRequest::Stop,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of every vCPU thread, by index.
    pub fn vcpu_states(&self) -> Vec<VcpuState> {
        self.slots().iter().map(|s| s.state).collect()
    }

    /// The kernel thread id of every vCPU thread, by index (0: not started yet); for
    /// pinning and cgroup placement.
    pub fn thread_ids(&self) -> Vec<i32> {
        self.slots().iter().map(|s| s.tid).collect()
    }

    fn set(&self, req: RunRequest) {
        // Stored under the lock so that a thread about to wait cannot miss the change.
        let _slots = self.slots();
        self.request.store(req as u8, Ordering::Release);
        self.changed.notify_all();
    }

    /// Called by vCPU thread `index` when it starts, before its first KVM_RUN: records its
    /// thread id and parks it if the VM is paused. The state is decided under the lock, so
    /// a thread is never running while its slot says paused (a thread built paused whose
    /// VM was resumed before it started must be seen as running, or `pause` would not
    /// kick it).
    fn started(&self, index: usize, vcpu: &mut Vcpu) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut slots = self.slots();
        slots[index].tid = tid;
        if self.request() != RunRequest::Pause {
            slots[index].state = VcpuState::Running;
            return;
        }
        drop(slots);
        self.park(index, vcpu);
    }

    /// Called by vCPU thread `index`: parks it until the request is no longer `Pause`,
    /// running the jobs [`VcpuControl::on_parked`] hands it meanwhile.
    fn park(&self, index: usize, vcpu: &mut Vcpu) {
        let mut slots = self.slots();
        slots[index].state = VcpuState::Paused;
        self.changed.notify_all();
        loop {
            if let Some(job) = slots[index].job.take() {
                drop(slots);
                job(vcpu);
                slots = self.slots();
                continue;
            }
            if self.request() != RunRequest::Pause {
                break;
            }
            slots = self.changed.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
        slots[index].state = VcpuState::Running;
    }

    /// Called by vCPU thread `index` when it leaves its loop for good.
    fn exited(&self, index: usize) {
        let mut slots = self.slots();
        slots[index].state = VcpuState::Exited;
        slots[index].job = None;
        self.changed.notify_all();
    }

    /// Runs `f` on every parked vCPU, on its own thread (KVM wants vCPU ioctls from the
    /// thread that runs the vCPU), and returns the results by vCPU index; `None` for a
    /// vCPU that is not parked or did not answer within `timeout`. This is how state is
    /// read from (and later written to) a paused VM: registers now, snapshots later.
    pub fn on_parked<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Vcpu) -> T + Send + Sync + 'static,
        timeout: Duration,
    ) -> Vec<Option<T>> {
        let f = Arc::new(f);
        let (tx, rx) = std::sync::mpsc::channel();
        let (vcpus, jobs) = {
            let mut slots = self.slots();
            let mut jobs = 0;
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.state != VcpuState::Paused {
                    continue;
                }
                let (f, tx) = (f.clone(), tx.clone());
                slot.job = Some(Box::new(move |vcpu: &mut Vcpu| {
                    let _ = tx.send((i, f(vcpu)));
                }));
                jobs += 1;
            }
            self.changed.notify_all();
            (slots.len(), jobs)
        };
        // Only the jobs hold senders now: a thread that exits drops its job, and once all
        // are gone recv fails at once instead of waiting for the deadline.
        drop(tx);
        let mut results: Vec<Option<T>> = (0..vcpus).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        for _ in 0..jobs {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, r)) => results[i] = Some(r),
                Err(_) => break,
            }
        }
        results
    }

    /// Pauses every vCPU and waits until each has parked (or exited). Threads that are
    /// still running are kicked out of KVM_RUN, again every few milliseconds in case a
    /// kick raced with the thread entering it. Fails after `timeout`, leaving the request
    /// at `Pause`.
    pub fn pause(&self, threads: &[JoinHandle<()>], timeout: Duration) -> Result<(), String> {
        self.set(RunRequest::Pause);
        let deadline = Instant::now() + timeout;
        let mut slots = self.slots();
        loop {
            let running: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].state == VcpuState::Running)
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "vCPU {} did not stop within {timeout:?}",
                    running[0]
                ));
            }
            for &i in &running {
                if let Some(t) = threads.get(i).filter(|t| !t.is_finished()) {
                    kick(t);
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            slots = self
                .changed
                .wait_timeout(slots, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.set(RunRequest::Run);
    }

    /// Stops every vCPU thread (parked ones too) and joins them: kicks each out of KVM_RUN
    /// until it has left its loop. A thread still running after 5 s is abandoned with a
    /// warning (signals always interrupt KVM_RUN, so it would be stuck elsewhere).
    pub fn stop(&self, threads: &mut Vec<JoinHandle<()>>) {
        self.set(RunRequest::Stop);
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                kick(t);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("a vCPU thread did not stop within 5 s; abandoning it");
            }
        }
    }
}

/// Sends the kick signal to a vCPU thread that has not been joined.
fn kick(thread: &JoinHandle<()>) {
    // SAFETY: the thread handle is alive (not joined, so its pthread_t is valid); the kick
    // signal has a handler installed in every thread.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), crate::signals::vcpu_kick_signal()) };
}

/// Counters of one vCPU since the VM was (re)built.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Returns from KVM_RUN, whatever the reason (including kicks).
    pub exits: AtomicU64,
    /// Port I/O exits handled by the VMM.
    pub io_exits: AtomicU64,
    /// MMIO exits handled by the VMM.
    pub mmio_exits: AtomicU64,
}

/// What vCPU threads share with the VMM.
pub struct VcpuShared {
    pub io_bus: Bus,
    pub mmio_bus: Bus,
    pub power: Arc<PowerEvents>,
    /// Run / pause / stop.
    pub control: VcpuControl,
    /// Per-vCPU counters, by index.
    pub stats: Vec<VcpuStats>,
    /// The first failure any vCPU hit; `failed` wakes the VMM.
    pub failure: Mutex<Option<GuestFailure>>,
    pub failed: EventFd,
}

impl VcpuShared {
    fn fail(&self, vcpu: &Vcpu, reason: String) {
        let failure = GuestFailure {
            vcpu: vcpu.index(),
            reason,
            registers: vcpu.dump_registers(),
        };
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(failure);
        let _ = self.failed.write(1);
    }
}

/// Spawns the thread that runs `vcpu` until the VMM stops it or the guest ends.
pub fn spawn(mut vcpu: Vcpu, shared: Arc<VcpuShared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{}", vcpu.index()))
        .spawn(move || run(&mut vcpu, &shared))
}

fn run(vcpu: &mut Vcpu, shared: &VcpuShared) {
    /// Marks the thread exited however it leaves (a panic included).
    struct Exited<'a>(&'a VcpuControl, usize);
    impl Drop for Exited<'_> {
        fn drop(&mut self) {
            self.0.exited(self.1);
        }
    }
    let _exited = Exited(&shared.control, vcpu.index() as usize);
    crate::signals::set_thread_kvm_run(vcpu.fd().get_kvm_run());
    shared.control.started(vcpu.index() as usize, vcpu);
    run_loop(vcpu, shared);
    // The kvm_run page goes away with the vCPU: no kick may write to it after this.
    crate::signals::set_thread_kvm_run(std::ptr::null_mut());
    // Where each vCPU was when the VM stopped: the first thing to look at when a guest hangs.
    if log::log_enabled!(log::Level::Debug) {
        log::debug!(
            "vCPU {} stopped at:\n{}",
            vcpu.index(),
            vcpu.dump_registers()
        );
    }
}

fn run_loop(vcpu: &mut Vcpu, shared: &VcpuShared) {
    let index = vcpu.index() as usize;
    let stats = &shared.stats[index];
    // Whether the last exit was an I/O access that KVM completes on the next KVM_RUN.
    let mut io_pending = false;
    loop {
        match shared.control.request() {
            RunRequest::Stop => return,
            // Complete the access first (KVM does, then returns EINTR without running the
            // guest), so that a parked vCPU's state is consistent.
            RunRequest::Pause if io_pending => vcpu.fd().set_kvm_immediate_exit(1),
            RunRequest::Pause => {
                shared.control.park(index, vcpu);
                continue;
            }
            RunRequest::Run => {}
        }
        let exit = vcpu.fd().run();
        stats.exits.fetch_add(1, Ordering::Relaxed);
        io_pending = matches!(
            exit,
            Ok(VcpuExit::IoOut(..)
                | VcpuExit::IoIn(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..))
        );
        let reason = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.io_exits.fetch_add(1, Ordering::Relaxed);
                if !shared.io_bus.write(u64::from(port), data) {
                    log::trace!("unclaimed port write {port:#x} <- {data:x?}");
                }
                continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.io_exits.fetch_add(1, Ordering::Relaxed);
                if !shared.io_bus.read(u64::from(port), data) {
                    log::trace!("unclaimed port read {port:#x}");
                }
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                shared.mmio_bus.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                shared.mmio_bus.write(addr, data);
                continue;
            }
            // With the in-kernel LAPIC, HLT is handled by KVM; a stray exit is harmless.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => continue,
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => {
                    shared.power.request(PowerRequest::Poweroff);
                    return;
                }
                KVM_SYSTEM_EVENT_RESET => {
                    shared.power.request(PowerRequest::Reset);
                    return;
                }
                KVM_SYSTEM_EVENT_CRASH => "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".to_string(),
                other => format!("unexpected KVM system event {other}"),
            },
            Ok(VcpuExit::Shutdown) => {
                "triple fault: the guest hit an exception it could not handle (KVM_EXIT_SHUTDOWN)".to_string()
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => format!(
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}, host CPU {cpu})"
            ),
            Ok(VcpuExit::InternalError) => internal_error(vcpu),
            Ok(other) => format!("unexpected exit from KVM_RUN: {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.fd().set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        shared.fail(vcpu, reason);
        return;
    }
}

/// Describes KVM_EXIT_INTERNAL_ERROR with its sub-error, the way QEMU reports it.
fn internal_error(vcpu: &mut Vcpu) -> String {
    let run = vcpu.fd().get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member
    // KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        1 => "emulation failure: KVM could not emulate an instruction",
        2 => "simultaneous exceptions",
        3 => "delivery of an event failed",
        4 => "unexpected VM exit",
        _ => "unknown sub-error",
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..n]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    format!(
        "KVM internal error {} ({what}); data [{}]",
        internal.suberror,
        data.join(", ")
    )
}
