//! The run loop of one vCPU thread: KVM_RUN, dispatch of I/O and MMIO exits to the buses,
//! and reporting of everything that ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// What vCPU threads share with the VMM.
pub struct VcpuShared {
    pub io_bus: Bus,
    pub mmio_bus: Bus,
    pub power: Arc<PowerEvents>,
    /// Set by the VMM to make every vCPU leave its loop.
    pub stop: AtomicBool,
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
    run_loop(vcpu, shared);
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
    while !shared.stop.load(Ordering::Acquire) {
        let exit = vcpu.fd().run();
        let reason = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !shared.io_bus.write(u64::from(port), data) {
                    log::trace!("unclaimed port write {port:#x} <- {data:x?}");
                }
                continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.io_bus.read(u64::from(port), data) {
                    log::trace!("unclaimed port read {port:#x}");
                }
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                shared.mmio_bus.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
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
