//! Builds a running VM from a [`VmConfig`]: guest memory, KVM VM, kernel and boot data,
//! ACPI tables, platform devices and vCPUs, in that order.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_ioctls::Kvm;
use vireo_boot::acpi::{create_acpi_tables, AcpiConfig};
use vireo_boot::layout::{self, irqs, ports};
use vireo_boot::loader::{self, KernelInfo};
use vireo_devices::legacy::acpi_pm::AcpiPmDevice;
use vireo_devices::legacy::cmos::Cmos;
use vireo_devices::legacy::ged::GedDevice;
use vireo_devices::legacy::i8042::I8042Device;
use vireo_devices::legacy::post_code::PostCode;
use vireo_devices::legacy::pvpanic::PvPanic;
use vireo_devices::legacy::serial::SerialDevice;
use vireo_devices::{Bus, PowerEvents, SharedDevice};
use vireo_hypervisor::memory::create_guest_memory;
use vireo_hypervisor::{GuestMemoryMmap, Vcpu, Vm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backends::Backends;
use crate::console::{ConsoleHub, ConsoleOutput};
use crate::device_manager::{self, PciDevices};
use crate::vcpu_thread::{self, VcpuControl, VcpuShared, VcpuStats};
use crate::{VmConfig, VmmError};

/// Devices that outlive a guest reset, as their real counterparts do: the CMOS keeps its
/// battery-backed NVRAM and clock offset, the console its output stream, the boot timer its
/// start time.
pub struct Platform {
    pub console: ConsoleOutput,
    pub cmos: Arc<Mutex<Cmos>>,
    pub post_code: Arc<Mutex<PostCode>>,
    pub power: Arc<PowerEvents>,
    /// Signalled when the guest writes the boot-complete marker to port 0x80.
    pub boot_marker: EventFd,
    /// Backends of the virtio devices (image files, TAPs, sockets), opened once.
    pub backends: Backends,
}

impl Platform {
    /// `hub` serves a socket console (`config.console` = socket); `backends` were opened
    /// before KVM was (see [`Backends::open`]).
    pub fn new(
        config: &VmConfig,
        start: Instant,
        hub: Option<&Arc<ConsoleHub>>,
        mut backends: Backends,
    ) -> Result<Self, VmmError> {
        let boot_marker = EventFd::new(EFD_NONBLOCK).map_err(VmmError::Io)?;
        let mut post_code = PostCode::new(start);
        post_code.set_marker_notifier(boot_marker.try_clone().map_err(VmmError::Io)?);
        let console = ConsoleOutput::open(config, hub).map_err(VmmError::Console)?;
        if config.virtio_console {
            backends.console_output = Some(console.clone());
        }
        Ok(Self {
            backends,
            console,
            cmos: Arc::new(Mutex::new(Cmos::new(config.memory))),
            post_code: Arc::new(Mutex::new(post_code)),
            power: Arc::new(PowerEvents::new().map_err(VmmError::Io)?),
            boot_marker,
        })
    }
}

/// A built VM whose vCPUs are running.
pub struct RunningVm {
    // Field order matters for drop: vCPU threads are joined by the VMM before this is
    // dropped; the virtio devices (whose workers use guest memory and whose interrupt
    // routes hold the VM's fd) go first, the VM's memory slots before the memory they
    // point into.
    /// The PCI root bus and the virtio devices on it.
    pub pci: PciDevices,
    pub vm: Vm,
    pub memory: GuestMemoryMmap,
    pub shared: Arc<VcpuShared>,
    pub threads: Vec<JoinHandle<()>>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub ged: Arc<Mutex<GedDevice>>,
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        // The buses hold the PCI configuration devices, which hold the root bus, which
        // holds the MMIO bus: emptying them breaks that cycle, so that the devices, the
        // KVM VM and its memory go with this boot instead of leaking on every reboot.
        self.shared.io_bus.clear();
        self.shared.mmio_bus.clear();
    }
}

/// Builds the VM for one boot and starts its vCPUs, running or (`paused`) parked before
/// their first instruction.
pub fn build(
    kvm: &Kvm,
    config: &VmConfig,
    kernel: &KernelInfo,
    platform: &Platform,
    paused: bool,
) -> Result<RunningVm, VmmError> {
    let memory = create_guest_memory(config.memory)?;
    let vm = Vm::new(kvm)?;
    vm.register_memory(&memory)?;

    // Kernel, initrd, ACPI, then the boot information that points at all of them.
    let loaded = loader::load_kernel(&memory, kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(&memory, &loaded, path)?),
        None => None,
    };
    let rsdp = create_acpi_tables(
        &memory,
        &AcpiConfig {
            num_cpus: config.cpus,
            pci: Some(device_manager::pci_windows(config.memory)),
        },
    )
    .map_err(|e| VmmError::Acpi(e.to_string()))?;
    vireo_boot::mptable::write(&memory, config.cpus)?;
    loader::write_reset_stub(&memory)?;
    let entry = loader::write_boot_info(&memory, &loaded, &config.cmdline, initrd, Some(rsdp.0))?;

    // Platform devices.
    let io_bus = Bus::new();
    let mmio_bus = Bus::new();
    let serial = SerialDevice::new(Box::new(platform.console.clone())).map_err(VmmError::Io)?;
    vm.register_irqfd(serial.irq_evt(), irqs::SERIAL_COM1)?;
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(I8042Device::new(platform.power.clone())));
    let acpi_pm = Arc::new(Mutex::new(AcpiPmDevice::new(platform.power.clone())));
    let ged = GedDevice::new().map_err(VmmError::Io)?;
    vm.register_irqfd(ged.irq_evt(), irqs::ACPI_GED)?;
    let ged = Arc::new(Mutex::new(ged));
    let pvpanic = Arc::new(Mutex::new(PvPanic::new(platform.power.clone())));
    let port = u64::from;
    let inserts: [(SharedDevice, u64, u64); 7] = [
        (serial.clone(), port(ports::SERIAL_COM1), 8),
        (i8042.clone(), port(ports::I8042_DATA), 1),
        (i8042, port(ports::I8042_COMMAND), 1),
        (platform.cmos.clone(), port(ports::CMOS), 2),
        (platform.post_code.clone(), port(ports::POST_CODE), 1),
        (acpi_pm, port(ports::ACPI_SLEEP_CONTROL), 3),
        (pvpanic, port(ports::PVPANIC), 1),
    ];
    for (dev, base, len) in inserts {
        io_bus
            .insert(dev, base, len)
            .map_err(|e| VmmError::Device(e.to_string()))?;
    }
    mmio_bus
        .insert(
            ged.clone(),
            layout::ACPI_GED_MMIO_START,
            layout::ACPI_GED_MMIO_SIZE,
        )
        .map_err(|e| VmmError::Device(e.to_string()))?;
    let pci = device_manager::build_pci(
        kvm,
        vm.shared_fd(),
        &memory,
        config,
        &platform.backends,
        &io_bus,
        &mmio_bus,
    )?;

    // vCPUs: all created and configured before any runs, so that the boot vCPU can start
    // the others.
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        let vcpu = Vcpu::new(vm.fd(), index)?;
        let boot = (index == 0).then_some(entry);
        vcpu.configure(kvm, &memory, config.cpu_template, config.cpus, boot)?;
        vcpus.push(vcpu);
    }
    let shared = Arc::new(VcpuShared {
        io_bus,
        mmio_bus,
        power: platform.power.clone(),
        control: VcpuControl::new(vcpus.len(), paused),
        stats: (0..vcpus.len()).map(|_| VcpuStats::default()).collect(),
        failure: Mutex::new(None),
        failed: EventFd::new(EFD_NONBLOCK).map_err(VmmError::Io)?,
    });
    let mut threads = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        threads.push(vcpu_thread::spawn(vcpu, shared.clone()).map_err(VmmError::Io)?);
    }
    Ok(RunningVm {
        vm,
        memory,
        shared,
        threads,
        serial,
        ged,
        pci,
    })
}
