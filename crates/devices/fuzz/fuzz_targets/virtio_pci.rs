//! The virtio-pci transport under arbitrary driver accesses (see ../README.md).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_devices::pci::{MsiMessage, PciDevice, VmHooks};
use vireo_devices::virtio::pci::{VirtioPciDevice, VirtioPciParams};
use vireo_devices::virtio::rng::VirtioRng;
use vireo_devices::virtio::GuestMemory;
use vireo_devices::BusDevice;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// A hypervisor that accepts everything and does nothing.
struct NoKvm;

impl VmHooks for NoKvm {
    fn allocate_gsi(&self) -> std::io::Result<u32> {
        Ok(24)
    }
    fn set_msi_route(&self, _: u32, _: Option<MsiMessage>) -> std::io::Result<()> {
        Ok(())
    }
    fn register_irqfd(&self, _: &EventFd, _: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn unregister_irqfd(&self, _: &EventFd, _: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn register_ioevent(&self, _: &EventFd, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn unregister_ioevent(&self, _: &EventFd, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn set_irq_line(&self, _: u32, _: usize, _: bool) -> std::io::Result<()> {
        Ok(())
    }
}

const BAR: u64 = 0xc000_0000;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut dev = VirtioPciDevice::new(
        Box::new(VirtioRng::new()),
        mem,
        Arc::new(NoKvm),
        VirtioPciParams {
            bar_addr: BAR,
            slot: 1,
            intx_gsi: 17,
            msix: data.first().is_some_and(|b| b & 1 == 1),
        },
    )
    .unwrap();
    // Each op: kind, offset (2 bytes), size, value (8 bytes).
    for op in data.chunks_exact(12) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let size = [1usize, 2, 4, 8][usize::from(op[3] & 3)];
        let value = &op[4..12];
        match op[0] % 4 {
            0 => {
                let mut b = [0u8; 8];
                dev.read(BAR, offset, &mut b[..size]);
            }
            1 => dev.write(BAR, offset, &value[..size]),
            2 => {
                let reg = usize::from(op[1]) % 1100;
                let at = usize::from(op[2] % 4);
                dev.config_write(reg, at, &value[..size.min(4 - at)]);
            }
            _ => {
                let _ = dev.config_read(usize::from(op[1]) % 1100);
            }
        }
        let st = dev.state();
        assert!(st.status & 4 == 0 || st.status & 8 != 0, "DRIVER_OK without FEATURES_OK");
        if st.status & 8 != 0 {
            assert_ne!(st.driver_features & (1 << 32), 0, "FEATURES_OK without VERSION_1");
        }
    }
});
