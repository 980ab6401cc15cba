//! The device manager's PCI side: the root bus with its two configuration mechanisms, the
//! virtio devices the configuration asks for, each behind a virtio-pci transport in its
//! own slot, and the KVM plumbing they need ([`KvmHooks`]: GSI routing for MSI-X, irqfds,
//! ioeventfds, INTx lines).
//!
//! Adding a virtio device kind takes two steps:
//! 1. its backend (image file, TAP fd, socket), if any, opened once in
//!    [`Backends::open`](crate::backends::Backends::open), before KVM is touched, so bad
//!    flags are reported on any machine and the backend survives guest resets;
//! 2. one arm in [`virtio_devices`] building the device model from the configuration and
//!    the backend, for every boot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vireo_boot::acpi::PciHostConfig;
use vireo_boot::layout::{self, irqs};
use vireo_devices::pci::{MsiMessage, PciConfigIo, PciConfigMmio, PciRoot, VmHooks};
use vireo_devices::virtio::balloon::VirtioBalloon;
use vireo_devices::virtio::block::Block;
use vireo_devices::virtio::console::VirtioConsole;
use vireo_devices::virtio::net::VirtioNet;
use vireo_devices::virtio::pci::{VirtioPciDevice, VirtioPciParams, BAR_SIZE};
use vireo_devices::virtio::rng::VirtioRng;
use vireo_devices::virtio::vsock::VirtioVsock;
use vireo_devices::virtio::{GuestMemory, VirtioDevice};
use vireo_devices::Bus;
use vmm_sys_util::eventfd::EventFd;

use crate::backends::Backends;
use crate::{VmConfig, VmmError};

/// IOAPIC pins (GSIs 0..24); MSI routes get GSIs above them.
const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

/// A device model with its name for logs ("virtio-blk", …).
pub type NamedDevice = (&'static str, Box<dyn VirtioDevice>);

/// The virtio device models for one boot, in PCI slot order. One arm per device kind.
pub fn virtio_devices(
    config: &VmConfig,
    backends: &Backends,
) -> Result<Vec<NamedDevice>, VmmError> {
    let mut devices: Vec<NamedDevice> = Vec::new();
    // virtio-rng needs no backend: it reads getrandom(2).
    if config.rng.is_some() {
        devices.push(("virtio-rng", Box::new(VirtioRng::new())));
    }
    // virtio-blk: one per --disk, in flag order (the guest's vda, vdb, …), each on its
    // image (opened and locked at VMM start).
    for (disk, queues) in &backends.disks {
        devices.push(("virtio-blk", Box::new(Block::new(disk.clone(), *queues))));
    }
    // virtio-net: one per --net, in flag order, each on its TAP (opened at VMM start).
    for net in &backends.nets {
        devices.push(("virtio-net", Box::new(VirtioNet::new(net.clone()))));
    }
    // virtio-console: output to the console's sinks, input from the event loop.
    if config.virtio_console {
        let (Some(input), Some(output)) = (&backends.console_input, &backends.console_output)
        else {
            return Err(VmmError::Device(
                "--console virtio: the console backend is not open".into(),
            ));
        };
        devices.push((
            "virtio-console",
            Box::new(VirtioConsole::new(Box::new(output.clone()), input.clone())),
        ));
    }
    if let Some(vsock) = &backends.vsock {
        devices.push(("virtio-vsock", Box::new(VirtioVsock::new(vsock.clone()))));
    }
    if let (Some(control), Some(b)) = (&backends.balloon, &config.balloon) {
        devices.push((
            "virtio-balloon",
            Box::new(VirtioBalloon::new(control.clone(), b.deflate_on_oom)),
        ));
    }
    Ok(devices)
}

/// The PCI windows of a VM with `memory` bytes of RAM (what the DSDT describes).
pub fn pci_windows(memory: u64) -> PciHostConfig {
    PciHostConfig {
        mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
        mmio64: layout::pci_mmio64_window(memory),
    }
}

/// The PCI devices of one boot. Dropping it stops the virtio devices' workers.
pub struct PciDevices {
    pub root: Arc<PciRoot>,
    pub devices: Vec<(&'static str, usize, Arc<Mutex<VirtioPciDevice>>)>,
}

/// Builds the root bus on `io_bus`/`mmio_bus` and plugs in the configured virtio devices.
pub fn build_pci(
    kvm: &Kvm,
    vm_fd: Arc<VmFd>,
    memory: &GuestMemory,
    config: &VmConfig,
    backends: &Backends,
    io_bus: &Bus,
    mmio_bus: &Bus,
) -> Result<PciDevices, VmmError> {
    let dev_err = |e: &dyn std::fmt::Display| VmmError::Device(e.to_string());
    let windows = pci_windows(config.memory);
    let root = Arc::new(PciRoot::new(
        mmio_bus.clone(),
        windows.mmio32,
        windows.mmio64,
    ));
    io_bus
        .insert(
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            u64::from(layout::PCI_CONFIG_IO_START),
            u64::from(layout::PCI_CONFIG_IO_SIZE),
        )
        .map_err(|e| dev_err(&e))?;
    mmio_bus
        .insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_BUS_SIZE * (u64::from(layout::PCI_LAST_BUS) + 1),
        )
        .map_err(|e| dev_err(&e))?;

    // MSI-X needs GSI routing; without it the devices offer INTx only.
    let msix = kvm.check_extension(Cap::IrqRouting);
    if !msix {
        log::warn!("KVM lacks KVM_CAP_IRQ_ROUTING: virtio devices use INTx, not MSI-X");
    }
    let hooks: Arc<dyn VmHooks> = Arc::new(KvmHooks::new(vm_fd));
    let mut devices = Vec::new();
    for (name, model) in virtio_devices(config, backends)? {
        let slot = root
            .free_slot()
            .ok_or_else(|| VmmError::Device(format!("{name}: no free PCI slot")))?;
        let bar_addr = root
            .allocate_bar(BAR_SIZE)
            .map_err(|e| VmmError::Device(format!("{name}: {e}")))?;
        let params = VirtioPciParams {
            bar_addr,
            slot,
            intx_gsi: irqs::pci_intx_gsi(slot as u32, 0),
            msix,
        };
        let dev = VirtioPciDevice::new(model, memory.clone(), hooks.clone(), params)
            .map_err(|e| VmmError::Device(format!("{name}: {e}")))?;
        let dev = Arc::new(Mutex::new(dev));
        let slot = root
            .add_device(dev.clone())
            .map_err(|e| VmmError::Device(format!("{name}: {e}")))?;
        log::info!("{name} at PCI 00:{slot:02x}.0, BAR0 {bar_addr:#x}");
        devices.push((name, slot, dev));
    }
    Ok(PciDevices { root, devices })
}

/// [`VmHooks`] on a KVM VM.
pub struct KvmHooks {
    fd: Arc<VmFd>,
    next_gsi: AtomicU32,
    /// MSI routes by GSI; KVM_SET_GSI_ROUTING replaces the whole table, so it is rebuilt
    /// from these plus the irqchip defaults on every change.
    msi_routes: Mutex<BTreeMap<u32, MsiMessage>>,
    /// Asserted sources (slot bits) of each shared INTx line.
    intx: Mutex<HashMap<u32, u32>>,
}

impl KvmHooks {
    pub fn new(fd: Arc<VmFd>) -> Self {
        Self {
            fd,
            next_gsi: AtomicU32::new(IOAPIC_PINS),
            msi_routes: Mutex::new(BTreeMap::new()),
            intx: Mutex::new(HashMap::new()),
        }
    }

    fn apply_routes(&self, msi: &BTreeMap<u32, MsiMessage>) -> std::io::Result<()> {
        let mut entries = irqchip_routes();
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let mut routing = KvmIrqRouting::new(entries.len())
            .map_err(|e| std::io::Error::other(format!("GSI routing table: {e:?}")))?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.fd
            .set_gsi_routing(&routing)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// KVM's default routes (what it sets up with the in-kernel irqchip): GSIs 0..16 to the
/// PICs and the IOAPIC, 16..24 to the IOAPIC.
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(chip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(chip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

fn kvm_io(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl VmHooks for KvmHooks {
    fn allocate_gsi(&self) -> std::io::Result<u32> {
        let gsi = self.next_gsi.fetch_add(1, Ordering::SeqCst);
        if gsi >= MAX_GSI {
            return Err(std::io::Error::other("out of GSIs for MSI-X vectors"));
        }
        Ok(gsi)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> std::io::Result<()> {
        let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match msg {
            Some(m) => routes.insert(gsi, m) != Some(m),
            None => routes.remove(&gsi).is_some(),
        };
        if changed {
            self.apply_routes(&routes)?;
        }
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(kvm_io)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd.unregister_irqfd(fd, gsi).map_err(kvm_io)
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_io)
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.fd
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_io)
    }

    fn set_irq_line(&self, gsi: u32, source: usize, level: bool) -> std::io::Result<()> {
        let mut intx = self.intx.lock().unwrap_or_else(|e| e.into_inner());
        let sources = intx.entry(gsi).or_default();
        let was = *sources != 0;
        let bit = 1u32 << (source % 32);
        if level {
            *sources |= bit;
        } else {
            *sources &= !bit;
        }
        let now = *sources != 0;
        if was != now {
            self.fd.set_irq_line(gsi, now).map_err(kvm_io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_kvms() {
        let r = irqchip_routes();
        assert_eq!(
            r.len(),
            16 * 2 + 8,
            "PIC + IOAPIC for 0..16, IOAPIC for 16..24"
        );
        assert!(r
            .iter()
            .all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP && e.gsi < 24));
    }

    #[test]
    fn each_configured_device_gets_a_model() {
        let none = virtio_devices(&VmConfig::default(), &Backends::default()).unwrap();
        assert!(none.is_empty());
        let cfg = VmConfig {
            rng: Some(Default::default()),
            ..VmConfig::default()
        };
        let devs = virtio_devices(&cfg, &Backends::open(&cfg).unwrap()).unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].0, "virtio-rng");
        assert_eq!(devs[0].1.device_type(), 4);

        // Disks in flag order, with their queue counts.
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let disk = |name: &str, queues| {
            let path = dir.as_path().join(name);
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            crate::config::DiskConfig {
                path,
                format: Some(crate::config::DiskFormat::Raw),
                queues,
                ..Default::default()
            }
        };
        let cfg = VmConfig {
            disks: vec![disk("a.raw", None), disk("b.raw", Some(3))],
            ..VmConfig::default()
        };
        let b = Backends::open(&cfg).unwrap();
        let devs = virtio_devices(&cfg, &b).unwrap();
        let blk: Vec<_> = devs
            .iter()
            .map(|(n, d)| (*n, d.device_type(), d.queue_max_sizes().len()))
            .collect();
        assert_eq!(blk, vec![("virtio-blk", 2, 1), ("virtio-blk", 2, 3)]);
        drop(devs);
        drop(b);

        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let cfg = VmConfig {
            virtio_console: true,
            vsock: Some(crate::config::VsockConfig {
                cid: 3,
                socket: dir.as_path().join("v.sock"),
            }),
            balloon: Some(Default::default()),
            ..VmConfig::default()
        };
        let mut b = Backends::open(&cfg).unwrap();
        assert!(
            virtio_devices(&cfg, &b).is_err(),
            "the console's sinks come with the platform"
        );
        b.console_output = Some(crate::console::ConsoleOutput::open(&cfg, None).unwrap());
        let devs = virtio_devices(&cfg, &b).unwrap();
        let kinds: Vec<_> = devs.iter().map(|(n, d)| (*n, d.device_type())).collect();
        assert_eq!(
            kinds,
            vec![
                ("virtio-console", 3),
                ("virtio-vsock", 19),
                ("virtio-balloon", 5)
            ]
        );
    }
}
