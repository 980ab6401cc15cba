//! PCI: the root bus (bus 0) with its configuration mechanisms, BAR allocation, and what a
//! PCI device model implements.
//!
//! * [`config`]: a type-0 configuration space (header, BARs, capability list, write masks).
//! * [`root`]: the root bus — 32 slots, the host bridge at 00.0, configuration access through
//!   ports 0xCF8/0xCFC and through ECAM, BARs mapped on (and moved around) the MMIO bus.
//! * [`msix`]: an MSI-X table and pending-bit array delivering through KVM irqfds.
//!
//! Everything KVM-specific (GSI routes, irqfds, ioeventfds, IRQ lines) goes through
//! [`VmHooks`], implemented by the VMM; tests use a recording fake.

pub mod config;
pub mod msix;
pub mod root;

use std::io;

use vmm_sys_util::eventfd::EventFd;

pub use config::{BarKind, PciConfig};
pub use root::{PciConfigIo, PciConfigMmio, PciRoot, PciRootError, BUS_SLOTS};

use crate::BusDevice;

/// A device on the PCI bus: its configuration space, and its BARs (accessed through
/// [`BusDevice`] with `base` = the BAR's current address).
pub trait PciDevice: BusDevice {
    /// Reads the 32-bit configuration register `reg` (dword index; 0..64 is the PCI
    /// header and capabilities, 64..1024 PCIe extended space).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes, not crossing the dword) at byte `offset` of register
    /// `reg`.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]);
    /// Where each memory BAR should be decoded now: `(index, address, size)`; a BAR being
    /// sized by the guest (all-ones written) is left out, so it stays where it was.
    fn bars(&self) -> Vec<(usize, u64, u64)>;
    /// The root moved BAR `index` from `old` to `new` on the MMIO bus (say, to re-register
    /// ioeventfds).
    fn bar_moved(&mut self, index: usize, old: u64, new: u64) {
        let _ = (index, old, new);
    }
}

/// An MSI message as the guest programmed it in an MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// What PCI devices need from the hypervisor. Implemented with KVM by the VMM.
pub trait VmHooks: Send + Sync {
    /// A fresh GSI for an MSI route.
    fn allocate_gsi(&self) -> io::Result<u32>;
    /// Routes `gsi` to an MSI message (`None`: removes the route).
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()>;
    /// A write to `fd` raises `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// A guest write (any size) to `addr` signals `fd` without leaving KVM.
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    /// Sets the level of interrupt source `source` (a slot) on the level-triggered line
    /// `gsi` (INTx through the IOAPIC); the line is high while any of its sources is.
    fn set_irq_line(&self, gsi: u32, source: usize, level: bool) -> io::Result<()>;
}

/// Standard PCI capability ids.
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_MSIX: u8 = 0x11;

#[cfg(test)]
pub(crate) mod testing {
    //! A [`VmHooks`] that records what devices ask of the hypervisor.
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeHooks {
        pub next_gsi: Mutex<u32>,
        pub routes: Mutex<BTreeMap<u32, MsiMessage>>,
        pub ioevents: Mutex<Vec<u64>>,
        pub irqfds: Mutex<Vec<u32>>,
        pub lines: Mutex<BTreeMap<u32, bool>>,
        pub line_changes: Mutex<u32>,
    }

    impl VmHooks for FakeHooks {
        fn allocate_gsi(&self) -> io::Result<u32> {
            let mut g = self.next_gsi.lock().unwrap();
            *g += 1;
            Ok(23 + *g)
        }
        fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
            let mut r = self.routes.lock().unwrap();
            match msg {
                Some(m) => r.insert(gsi, m),
                None => r.remove(&gsi),
            };
            Ok(())
        }
        fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.lock().unwrap().push(gsi);
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.lock().unwrap().retain(|&g| g != gsi);
            Ok(())
        }
        fn register_ioevent(&self, _fd: &EventFd, addr: u64) -> io::Result<()> {
            self.ioevents.lock().unwrap().push(addr);
            Ok(())
        }
        fn unregister_ioevent(&self, _fd: &EventFd, addr: u64) -> io::Result<()> {
            let mut v = self.ioevents.lock().unwrap();
            match v.iter().position(|&a| a == addr) {
                Some(i) => {
                    v.remove(i);
                    Ok(())
                }
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }
        fn set_irq_line(&self, gsi: u32, _source: usize, level: bool) -> io::Result<()> {
            self.lines.lock().unwrap().insert(gsi, level);
            *self.line_changes.lock().unwrap() += 1;
            Ok(())
        }
    }
}
