//! The KVM VM: memory slots, in-kernel interrupt controllers and PIT, interrupt eventfds.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vireo_boot::layout;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::{kvm_op, Error, GuestMemoryMmap, Result};

/// Capabilities without which vireo cannot build a PC-like VM.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens /dev/kvm and checks the API version and the capabilities vireo relies on.
pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// Largest vCPU count KVM accepts for one VM on this host.
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus()
}

/// A KVM virtual machine with its guest memory registered.
pub struct Vm {
    // Shared with the device manager (irqfds, ioeventfds, GSI routes from device threads).
    fd: Arc<VmFd>,
}

impl Vm {
    /// Creates a VM with an in-kernel irqchip (8259 PICs, IOAPIC, LAPICs) and PIT.
    pub fn new(kvm: &Kvm) -> Result<Self> {
        let fd = kvm.create_vm().map_err(kvm_op("KVM_CREATE_VM"))?;
        // Real-mode emulation on Intel needs a TSS and identity-map page in guest physical
        // space; both go in the MMIO hole where no RAM is.
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_op("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_op("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip().map_err(kvm_op("KVM_CREATE_IRQCHIP"))?;
        // The PC speaker port (0x61) is a dummy so that guests probing it do not exit to us.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_op("KVM_CREATE_PIT2"))?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<()> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::GuestMemory {
                    size: region.len(),
                    reason: e.to_string(),
                })?;
            let slot = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping behind `host` belongs to `mem`, which the caller keeps alive
            // for as long as the VM exists (the Vmm owns both and drops the VM first).
            unsafe { self.fd.set_user_memory_region(slot) }
                .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Makes a write to `evt` raise interrupt line `gsi` (edge-triggered).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(kvm_op("KVM_IRQFD"))
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM file descriptor, for device code that outlives a borrow of the VM.
    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }
}
