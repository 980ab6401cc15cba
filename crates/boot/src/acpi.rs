//! ACPI tables describing a vireo VM to the guest: RSDP → XSDT → FADT (→ DSDT), MADT, and
//! with PCI the MCFG (ECAM) plus a PCI0 host bridge in the DSDT.
//!
//! The platform is "hardware-reduced" ACPI (no PM1 blocks, no SCI, no GPEs): poweroff goes
//! through the FADT sleep control register, reboot through the reset register, and the
//! power button is a control-method device notified by the ACPI Generic Event Device (GED).
//! The DSDT also describes COM1 and the CMOS RTC so that a stock Linux kernel finds them
//! through ACPI PNP.
//!
//! Everything is written at [`layout::ACPI_START`], RSDP first (Linux scans the BIOS area
//! 0xe0000..0x100000 for it when it is not handed the address by the boot protocol).
//!
//! The tests check the tables with ACPICA's `iasl -d` (Debian package `acpica-tools`);
//! without `iasl` that test is skipped, so CI must `apt-get install -y acpica-tools`.

use acpi_tables::aml::{
    self, AddressSpace as AmlAddressSpace, AddressSpaceCacheable, Device, EISAName, Field,
    FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local,
    Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate,
    Scope, Store, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{self, irqs, ports};

/// OEM identification in every table header.
const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_REVISION: u32 = 1;

/// Largest vCPU count the xAPIC MADT entries can describe: APIC IDs are 8-bit and 0xff is
/// the broadcast ID, so IDs 0..=254.
pub const MAX_XAPIC_CPUS: u32 = 255;

/// MADT flag: the platform also has dual 8259 PICs (Linux then masks them properly).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt controller structure type of a Local APIC NMI entry (ACPI 6.5 §5.2.12.7).
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// "All processors" in a Local APIC NMI entry.
const ACPI_ALL_PROCESSORS: u8 = 0xff;

/// Tables are placed on 16-byte boundaries (the RSDP must be; others just stay tidy).
const TABLE_ALIGN: u64 = 16;

/// What the tables describe. Construct with `AcpiConfig { num_cpus, ..Default::default() }`
/// so that fields added later keep existing callers compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; their APIC IDs (and ACPI processor UIDs) are `0..num_cpus`.
    pub num_cpus: u32,
    /// The PCI root bus, if any: an MCFG table and a PCI0 host bridge in the DSDT.
    pub pci: Option<PciHostConfig>,
}

impl Default for AcpiConfig {
    fn default() -> Self {
        Self {
            num_cpus: 1,
            pci: None,
        }
    }
}

/// What the DSDT says about the PCI host bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHostConfig {
    /// The 32-bit and 64-bit MMIO windows for BARs: (start, size).
    pub mmio32: (u64, u64),
    pub mmio64: (u64, u64),
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("a VM needs at least one vCPU to describe")]
    NoCpus,
    #[error(
        "{0} vCPUs requested but the MADT describes at most {MAX_XAPIC_CPUS} \
         (xAPIC IDs 0..=254; x2APIC entries are not implemented)"
    )]
    TooManyCpus(u32),
    #[error("ACPI tables need {size:#x} bytes but the ACPI region holds {max:#x}")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot write ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT at [`layout::ACPI_START`] and returns the RSDP's
/// address (for the PVH start info / boot_params `acpi_rsdp_addr`).
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.num_cpus > MAX_XAPIC_CPUS {
        return Err(AcpiError::TooManyCpus(cfg.num_cpus));
    }

    // Layout: RSDP | DSDT | FADT | MADT | XSDT, each 16-byte aligned. Tables that point at
    // others come after them so every address is known when a table is built.
    let rsdp_addr = layout::ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);
    let mut place = |len: usize| {
        let at = next;
        next = align(at + len as u64);
        at
    };

    let dsdt = dsdt(cfg);
    let dsdt_addr = place(dsdt.len());
    let fadt = fadt(dsdt_addr);
    let fadt_addr = place(fadt.len());
    let madt = madt(cfg);
    let madt_addr = place(madt.len());
    let mut tables = vec![fadt_addr, madt_addr];
    let mcfg = cfg.pci.map(|_| mcfg());
    if let Some(mcfg) = &mcfg {
        tables.push(place(mcfg.len()));
    }
    let xsdt = xsdt(&tables);
    let xsdt_addr = place(xsdt.len());
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let size = next - layout::ACPI_START;
    if size > layout::ACPI_SIZE {
        return Err(AcpiError::TooLarge {
            size,
            max: layout::ACPI_SIZE,
        });
    }

    let mut writes = vec![
        (rsdp_addr, &rsdp),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (xsdt_addr, &xsdt),
    ];
    if let Some(mcfg) = &mcfg {
        writes.push((tables[2], mcfg));
    }
    for (addr, bytes) in writes {
        mem.write_slice(bytes, GuestAddress(addr))?;
    }
    Ok(GuestAddress(rsdp_addr))
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"VIREOXSD", OEM_REVISION);
    for &t in tables {
        xsdt.add_entry(t);
    }
    to_bytes(&xsdt)
}

/// An 8-bit system-I/O register.
fn io_reg8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"VIREOFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons, if any, are control-method devices (PNP0C0C in the DSDT),
        // not fixed-feature hardware.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.reset_reg = io_reg8(ports::ACPI_RESET);
    f.reset_value = ports::ACPI_RESET_VALUE;
    f.sleep_control_reg = io_reg8(ports::ACPI_SLEEP_CONTROL);
    f.sleep_status_reg = io_reg8(ports::ACPI_SLEEP_STATUS);
    // CMOS index of the RTC century register.
    f.century = 0x32;
    // VGA may be present, MSI works, and there is deliberately no "8042 present" flag.
    f.iapc_boot_arch = 0u16.into();
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIREO\0\0\0").into();
    to_bytes(&f.finalize())
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    // Header plus the local APIC address and flags fields.
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"VIREOAPC", OEM_REVISION);
    madt.write_u32(36, layout::APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for cpu in 0..cfg.num_cpus {
        // Checked by the caller: num_cpus <= 255, so cpu fits in a u8.
        let id = cpu as u8;
        madt.append_slice(&to_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&to_bytes(&IoApic::new(0, layout::IOAPIC_START as u32, 0)));
    // LINT1 of every local APIC is wired to NMI, as on a PC. Flags 0: bus-conformant
    // polarity and trigger.
    let nmi_flags = 0u16.to_le_bytes();
    madt.append_slice(&[
        MADT_LOCAL_APIC_NMI,
        6,
        ACPI_ALL_PROCESSORS,
        nmi_flags[0],
        nmi_flags[1],
        1, // LINT1
    ]);
    madt.as_slice().to_vec()
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5_: SLP_TYP values for soft-off (a and b; the rest is reserved).
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![
            &ports::ACPI_S5_SLEEP_TYPE,
            &aml::ZERO,
            &aml::ZERO,
            &aml::ZERO,
        ]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    for cpu in 0..cfg.num_cpus {
        let name = format!("C{cpu:03X}");
        Device::new(
            Path::new(&name),
            vec![
                &Name::new(Path::new("_HID"), &"ACPI0007"),
                &Name::new(Path::new("_UID"), &cpu),
            ],
        )
        .to_aml_bytes(&mut sb);
    }
    power_button(&mut sb);
    ged(&mut sb);
    isa_device(
        "COM1",
        "PNP0501",
        1,
        ports::SERIAL_COM1,
        8,
        irqs::SERIAL_COM1,
        &mut sb,
    );
    isa_device("RTC_", "PNP0B00", 0, ports::CMOS, 2, 8, &mut sb);
    pvpanic(&mut sb);
    if let Some(pci) = &cfg.pci {
        pci_host_bridge(pci, &mut sb);
    }
    body.extend_from_slice(&Scope::raw(Path::new("\\_SB_"), sb));

    // Revision 2: 64-bit AML integers.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"VIREODSD", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// MCFG: where the ECAM window of segment 0 is and which buses it covers.
fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"VIREOMCF", OEM_REVISION);
    m.add_ecam(layout::PCI_ECAM_START, 0, 0, layout::PCI_LAST_BUS);
    to_bytes(&m)
}

/// The PCI Express root (PNP0A08, compatible with plain PCI PNP0A03): bus range, config
/// ports, the BAR windows, and INTx routing (_PRT) straight to IOAPIC GSIs. The ECAM
/// window is also claimed as a motherboard resource (PNP0C02), as Linux wants before it
/// trusts the MCFG.
fn pci_host_bridge(pci: &PciHostConfig, sink: &mut Vec<u8>) {
    let bus = AmlAddressSpace::<u16>::new_bus_number(0, u16::from(layout::PCI_LAST_BUS));
    let cfg_io = IO::new(
        layout::PCI_CONFIG_IO_START,
        layout::PCI_CONFIG_IO_START,
        1,
        layout::PCI_CONFIG_IO_SIZE as u8,
    );
    let (s32, l32) = pci.mmio32;
    let mmio32 = AmlAddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        s32 as u32,
        (s32 + l32 - 1) as u32,
        None,
    );
    let (s64, l64) = pci.mmio64;
    let mmio64 = AmlAddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        s64,
        s64 + l64 - 1,
        None,
    );
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&bus, &cfg_io, &mmio32, &mmio64]),
    );
    // _PRT: (slot address, pin, source 0 = GSI, GSI) for every slot and pin.
    let mut prt = aml::PackageBuilder::new();
    for slot in 1..32u32 {
        for pin in 0..4u32 {
            let addr = slot << 16 | 0xffff;
            let gsi = irqs::pci_intx_gsi(slot, pin);
            let pin = pin as u8;
            prt.add_element(&Package::new(vec![&addr, &pin, &aml::ZERO, &gsi]));
        }
    }
    Device::new(
        Path::new("PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A08")),
            &Name::new(Path::new("_CID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_SEG"), &aml::ZERO),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_BBN"), &aml::ZERO),
            &crs,
            &Name::new(Path::new("_PRT"), &prt),
        ],
    )
    .to_aml_bytes(sink);
    let ecam = Memory32Fixed::new(
        false,
        layout::PCI_ECAM_START as u32,
        (layout::PCI_ECAM_BUS_SIZE * (u64::from(layout::PCI_LAST_BUS) + 1)) as u32,
    );
    Device::new(
        Path::new("MRES"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&ecam])),
        ],
    )
    .to_aml_bytes(sink);
}

fn power_button(sink: &mut Vec<u8>) {
    Device::new(
        Path::new("PWRB"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C0C")),
            &Name::new(Path::new("_UID"), &aml::ZERO),
        ],
    )
    .to_aml_bytes(sink);
}

/// The Generic Event Device: its interrupt makes OSPM run `_EVT`, which reads (and thereby
/// clears) the pending event bits and notifies the power button for bit 0.
fn ged(sink: &mut Vec<u8>) {
    // `Name` encodes its value at once, so the resource template may be a temporary.
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&Interrupt::new(
            true,
            true,
            false,
            false,
            irqs::ACPI_GED,
        )]),
    );
    let region = OpRegion::new(
        Path::new("GDST"),
        OpRegionSpace::SystemMemory,
        &layout::ACPI_GED_MMIO_START,
        &1u8,
    );
    let field = Field::new(
        Path::new("GDST"),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = Path::new("GDAT");
    let pwrb = Path::new("\\_SB_.PWRB");
    let read_events = Store::new(&Local(0), &gdat);
    let power_bit = aml::And::new(&aml::ZERO, &Local(0), &aml::ONE);
    let notify = Notify::new(&pwrb, &0x80u8);
    let on_power = If::new(&power_bit, vec![&notify]);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&read_events, &on_power]);
    Device::new(
        Path::new("GED_"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &crs,
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(sink);
}

/// The pvpanic device: Linux's pvpanic-mmio driver binds to `QEMU0001` and accepts an I/O
/// port resource.
fn pvpanic(sink: &mut Vec<u8>) {
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&IO::new(ports::PVPANIC, ports::PVPANIC, 1, 1)]),
    );
    Device::new(
        Path::new("PEVT"),
        vec![
            &Name::new(Path::new("_HID"), &"QEMU0001"),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &crs,
        ],
    )
    .to_aml_bytes(sink);
}

/// A fixed-address ISA device with one I/O range and one edge-triggered, active-high IRQ.
fn isa_device(
    name: &str,
    eisa_id: &str,
    uid: u8,
    port: u16,
    len: u8,
    irq: u32,
    sink: &mut Vec<u8>,
) {
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![
            &IO::new(port, port, 1, len),
            &Interrupt::new(true, true, false, false, irq),
        ]),
    );
    Device::new(
        Path::new(name),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new(eisa_id)),
            &Name::new(Path::new("_UID"), &uid),
            &crs,
        ],
    )
    .to_aml_bytes(sink);
}

#[cfg(test)]
mod tests;
