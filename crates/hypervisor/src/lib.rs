//! KVM VM and vCPU state for vireo.
//!
//! * [`vm`]: the KVM VM (memory slots, in-kernel irqchip + PIT, irqfds).
//! * [`memory`]: guest RAM allocation around the MMIO hole.
//! * [`vcpu`]: a vCPU's boot-time architectural state (registers, MSRs, LAPIC) and dumps.
//! * [`cpuid`]: CPU templates (`host`, `baseline`) and SMP topology in CPUID.

pub mod cpuid;
pub mod memory;
pub mod vcpu;
pub mod vm;

pub use cpuid::CpuTemplate;
pub use memory::GuestMemoryMmap;
pub use vcpu::Vcpu;
pub use vireo_boot::BootEntry;
pub use vm::Vm;

/// Errors from the hypervisor layer; each names the KVM operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM available and do you have access? try `ls -l /dev/kvm`, and membership of the `kvm` group)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("KVM lacks a capability vireo needs: {0}")]
    MissingCapability(&'static str),
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    GuestMemory { size: u64, reason: String },
    #[error("cannot write boot state to guest memory: {0}")]
    GuestWrite(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for mapping a KVM ioctl error to [`Error::Kvm`].
pub(crate) fn kvm_op(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
