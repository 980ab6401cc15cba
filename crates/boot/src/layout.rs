//! Guest physical memory map of a vireo x86_64 VM.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM, left alone)
//! 0x0000_0500  boot GDT and IDT
//! 0x0000_6000  PVH hvm_start_info, then its memory map and module list
//! 0x0000_7000  Linux zero page (struct boot_params)
//! 0x0000_8000  boot stack top (64-bit bzImage entry)
//! 0x0000_9000  boot page tables: PML4, PDPT, PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 1 MiB: reserved (VGA hole, option ROMs, BIOS); the MP table
//!              starts at the EBDA (its floating pointer first)
//! 0x000e_0000  ACPI tables (RSDP first; scanned by Linux in 0xe0000..0x100000)
//! 0x000f_fff0  reset vector (F000:FFF0): a 16-byte real-mode stub that resets the machine
//! 0x0010_0000  RAM: kernel, initrd (at the top of low RAM)...
//! 0xc000_0000  MMIO hole start (3 GiB): 32-bit PCI BARs
//! 0xe000_0000  PCI ECAM (256 buses)
//! 0xf000_0000  platform MMIO (ACPI GED, ...)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above 4 GiB (the part of guest RAM that did not fit below the hole)
//! (RAM end, 1 GiB-aligned) 64-bit PCI MMIO window (large BARs)
//! ```

/// Boot GDT and an empty IDT, loaded by the VMM before the first instruction.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// Start of the PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// Size reserved for start_info, memory map and module list together.
pub const PVH_INFO_SIZE: u64 = 0x1000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4 at this address, PDPT and PD in the following pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line vireo will place (Linux x86 COMMAND_LINE_SIZE is 2048 with the NUL;
/// bzImages state their own limit in the setup header).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// MultiProcessor table: floating pointer, then the configuration table (at most ~5 KiB).
pub const MPTABLE_START: u64 = EBDA_START;
pub const MPTABLE_MAX_SIZE: u64 = ACPI_START - MPTABLE_START;
/// ACPI tables region (RSDP at its start); ends at the page holding the reset vector.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_SIZE: u64 = 0x1f000;
/// The real-mode reset vector, F000:FFF0. A PC BIOS has a jump to its reset code here;
/// vireo has no firmware, so [`crate::loader::write_reset_stub`] puts a tiny real-mode
/// stub here that asks the platform for a reset (Linux's "BIOS reboot" jumps here).
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Size of the reset-vector area (up to 1 MiB).
pub const RESET_VECTOR_SIZE: u64 = 0x10;
/// First byte above the legacy 1 MiB area.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Guest RAM below 4 GiB ends where the MMIO hole starts.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// 32-bit PCI MMIO window for BARs.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM), 1 MiB per bus. 256 buses are
/// reserved; the root bus (bus 0) is the only one decoded and described in the MCFG.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// ECAM bytes per bus, and the bus range vireo implements.
pub const PCI_ECAM_BUS_SIZE: u64 = 1 << 20;
pub const PCI_LAST_BUS: u8 = 0;
/// Port-I/O configuration mechanism #1: address at 0xCF8, data at 0xCFC.
pub const PCI_CONFIG_IO_START: u16 = 0xcf8;
pub const PCI_CONFIG_IO_SIZE: u16 = 8;
/// Size of the 64-bit PCI MMIO window above guest RAM.
pub const PCI_MMIO64_SIZE: u64 = 32 << 30;

/// The 64-bit PCI MMIO window for a VM with `ram` bytes of RAM: (start, size), starting
/// at the first 1 GiB boundary above RAM (and above 4 GiB).
pub fn pci_mmio64_window(ram: u64) -> (u64, u64) {
    let ram_end = ram_regions(ram)
        .last()
        .map_or(0, |r| r.start + r.size)
        .max(MMIO_HOLE_END);
    (ram_end.next_multiple_of(1 << 30), PCI_MMIO64_SIZE)
}
/// Platform MMIO devices (ACPI GED and friends).
pub const PLATFORM_MMIO_START: u64 = 0xf000_0000;
/// ACPI Generic Event Device registers (power button events).
pub const ACPI_GED_MMIO_START: u64 = PLATFORM_MMIO_START;
pub const ACPI_GED_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// KVM needs three pages for the TSS of real-mode emulation, and one for the EPT identity
/// map; both inside the MMIO hole below the IOAPIC where no RAM lives.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Port-I/O addresses of the platform devices.
pub mod ports {
    /// COM1 16550 UART (IRQ 4).
    pub const SERIAL_COM1: u16 = 0x3f8;
    /// i8042 keyboard controller (data 0x60, command/status 0x64); 0xfe on 0x64 resets.
    pub const I8042_DATA: u16 = 0x60;
    pub const I8042_COMMAND: u16 = 0x64;
    /// CMOS RTC index/data.
    pub const CMOS: u16 = 0x70;
    /// POST / boot-progress code port.
    pub const POST_CODE: u16 = 0x80;
    /// ACPI fixed hardware (hardware-reduced model): sleep control/status and reset registers.
    pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
    pub const ACPI_SLEEP_STATUS: u16 = 0x601;
    pub const ACPI_RESET: u16 = 0x602;
    /// Value that, written to [`ACPI_RESET`], resets the VM.
    pub const ACPI_RESET_VALUE: u8 = 0x1;
    /// Sleep type for S5 that the DSDT's `\_S5` package advertises.
    pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
    /// pvpanic: the guest reports a kernel panic here (QEMU's ISA pvpanic address, so
    /// guests' drivers find it where they expect; described in the DSDT as QEMU0001).
    pub const PVPANIC: u16 = 0x505;
}

/// Interrupt lines (GSIs) of the platform devices.
pub mod irqs {
    pub const SERIAL_COM1: u32 = 4;
    /// ACPI GED (power button) interrupt.
    pub const ACPI_GED: u32 = 9;
    /// PCI INTx lines: IOAPIC pins 16..24, level-triggered, shared by slots as
    /// [`pci_intx_gsi`] says (and the DSDT's _PRT tells the guest).
    pub const PCI_INTX_BASE: u32 = 16;
    pub const PCI_INTX_LINES: u32 = 8;

    /// The GSI of slot `slot`'s interrupt pin `pin` (0 = INTA# … 3 = INTD#): the usual
    /// rotation, so that the INTA# of neighbouring slots land on different lines.
    pub fn pci_intx_gsi(slot: u32, pin: u32) -> u32 {
        PCI_INTX_BASE + (slot + pin) % PCI_INTX_LINES
    }
}

/// One contiguous block of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub start: u64,
    pub size: u64,
}

/// Splits `size` bytes of guest RAM around the MMIO hole.
pub fn ram_regions(size: u64) -> Vec<RamRegion> {
    if size <= MMIO_HOLE_START {
        vec![RamRegion { start: 0, size }]
    } else {
        vec![
            RamRegion {
                start: 0,
                size: MMIO_HOLE_START,
            },
            RamRegion {
                start: MMIO_HOLE_END,
                size: size - MMIO_HOLE_START,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_hole() {
        assert_eq!(
            ram_regions(512 << 20),
            vec![RamRegion {
                start: 0,
                size: 512 << 20
            }]
        );
        assert_eq!(
            ram_regions(MMIO_HOLE_START),
            vec![RamRegion {
                start: 0,
                size: MMIO_HOLE_START
            }]
        );
        let r = ram_regions(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].size + r[1].size, 4 << 30);
        assert_eq!(r[1].start, 1 << 32);
    }

    #[test]
    fn pci_windows_stay_clear_of_ram_and_each_other() {
        assert_eq!(pci_mmio64_window(512 << 20).0, 1 << 32);
        assert_eq!(pci_mmio64_window(4 << 30).0, 5 << 30);
        assert_eq!(pci_mmio64_window((4 << 30) + 1).0, 6 << 30);
        const {
            assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
            assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= PLATFORM_MMIO_START);
        };
        assert_eq!(irqs::pci_intx_gsi(1, 0), 17);
        assert_eq!(irqs::pci_intx_gsi(7, 1), 16);
        assert!((0..32).all(|s| (16..24).contains(&irqs::pci_intx_gsi(s, 3))));
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (PVH_INFO_START, PVH_INFO_SIZE),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x3000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (ACPI_START, ACPI_SIZE),
            (RESET_VECTOR, RESET_VECTOR_SIZE),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= HIGH_MEMORY_START);
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} vs {b:x?}");
            }
        }
        const {
            assert!(
                BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000 && BOOT_STACK_POINTER < PML4_START
            )
        };
    }
}
