//! The Intel MultiProcessor Specification 1.4 table: the pre-ACPI description of CPUs,
//! the IOAPIC and ISA interrupt routing.
//!
//! Two reasons to provide it next to ACPI's MADT:
//! - kernels built without ACPI (common for minimal guest kernels) find their CPUs only
//!   here;
//! - every x86 Linux searches for it at boot, and when there is none it scans the whole
//!   F-segment remapping 64 KiB for each 16-byte step: ~65,000 page-table updates and TLB
//!   flushes, seconds where TLB flushes trap to the hypervisor (nested or shadow paging).
//!   The floating pointer sits at the start of the EBDA, the second place Linux looks, so
//!   the search ends at once.
//!
//! With ACPI, Linux takes the MADT and ignores this table's contents; both describe the
//! same machine (LAPIC IDs 0..n, one IOAPIC with ID 0, ISA IRQs identity-mapped, LINT0
//! ExtINT and LINT1 NMI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout;
use crate::loader::{BootError, Result};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Local APIC version of an integrated APIC (as KVM's).
const LAPIC_VERSION: u8 = 0x14;
/// KVM's IOAPIC version register.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ID: u8 = 0;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;
/// CPU signature (family 6) and feature flags (FPU, APIC) of the processor entries; Linux
/// reads the real values from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Bytes the table takes for `num_cpus` CPUs.
pub fn size(num_cpus: u32) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + num_cpus as usize * PROCESSOR_ENTRY_SIZE
        + ENTRY_SIZE * (2 + usize::from(ISA_IRQS) + 2)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, &b| acc.wrapping_add(b))
        .wrapping_neg()
}

/// The floating pointer followed by the configuration table, for `num_cpus` CPUs (APIC
/// IDs 0..num_cpus), to be placed at `base`.
pub fn build(num_cpus: u32, base: u64) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > 255 {
        return Err(BootError::Write(format!(
            "MP table: {num_cpus} CPUs do not fit 8-bit APIC IDs"
        )));
    }
    let mpc_addr = base + MPF_SIZE as u64;
    let mut mpc = Vec::with_capacity(size(num_cpus));
    mpc.extend_from_slice(&[0; MPC_HEADER_SIZE]);
    let mut entries: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        mpc.extend_from_slice(&[ENTRY_PROCESSOR, id as u8, LAPIC_VERSION, flags]);
        mpc.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        mpc.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        mpc.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    mpc.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    mpc.extend_from_slice(b"ISA   ");
    mpc.extend_from_slice(&[ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1]);
    mpc.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    entries += 2;
    // ISA IRQ n on IOAPIC pin n; flags 0: the bus's default polarity and trigger.
    for irq in 0..ISA_IRQS {
        mpc.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            IOAPIC_ID,
            irq,
        ]);
        entries += 1;
    }
    // Every local APIC: LINT0 from the 8259 (ExtINT), LINT1 NMI (destination 0xff: all).
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        mpc.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        entries += 1;
    }

    let len = u16::try_from(mpc.len()).expect("at most 255 CPUs: about 5 KiB");
    mpc[0..4].copy_from_slice(b"PCMP");
    mpc[4..6].copy_from_slice(&len.to_le_bytes());
    mpc[6] = 4; // specification 1.4
    mpc[8..16].copy_from_slice(b"VIREO   ");
    mpc[16..28].copy_from_slice(b"VIREO-VM    ");
    mpc[34..36].copy_from_slice(&entries.to_le_bytes());
    mpc[36..40].copy_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    mpc[7] = checksum(&mpc);

    let mut mpf = [0u8; MPF_SIZE];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&(mpc_addr as u32).to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = 4; // specification 1.4
                // Feature byte 1 = 0: the configuration table is present. Byte 2 = 0: virtual wire
                // mode (no IMCR).
    mpf[10] = checksum(&mpf);

    let mut table = mpf.to_vec();
    table.extend_from_slice(&mpc);
    Ok(table)
}

/// Writes the MP table for `num_cpus` CPUs at [`layout::MPTABLE_START`].
pub fn write<M: GuestMemoryBackend>(mem: &M, num_cpus: u32) -> Result<()> {
    let table = build(num_cpus, layout::MPTABLE_START)?;
    if table.len() as u64 > layout::MPTABLE_MAX_SIZE {
        return Err(BootError::Write(format!(
            "MP table of {} bytes exceeds its {} byte area",
            table.len(),
            layout::MPTABLE_MAX_SIZE
        )));
    }
    mem.write_slice(&table, GuestAddress(layout::MPTABLE_START))
        .map_err(|e| BootError::Write(format!("MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn floating_pointer_and_table_are_consistent() {
        for cpus in [1u32, 2, 4, 255] {
            let t = build(cpus, layout::MPTABLE_START).unwrap();
            assert_eq!(t.len(), size(cpus));
            let (mpf, mpc) = t.split_at(MPF_SIZE);
            assert_eq!(&mpf[0..4], b"_MP_");
            assert_eq!(sum(mpf), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, layout::MPTABLE_START + 16);
            assert_eq!((mpf[8], mpf[9], mpf[11]), (1, 4, 0));
            assert_eq!(&mpc[0..4], b"PCMP");
            let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(mpc), 0, "configuration table checksum");
            let count = u16::from_le_bytes([mpc[34], mpc[35]]) as u32;
            assert_eq!(count, cpus + 2 + 16 + 2);
            // Walk the entries as an OS does and check what they say.
            let (mut at, mut seen_cpus, mut bsp) = (MPC_HEADER_SIZE, 0, 0);
            let mut ioapic = None;
            let mut isa_irqs = Vec::new();
            for _ in 0..count {
                match mpc[at] {
                    ENTRY_PROCESSOR => {
                        assert_eq!(mpc[at + 1] as u32, seen_cpus, "APIC IDs in order");
                        assert_ne!(mpc[at + 3] & CPU_ENABLED, 0);
                        if mpc[at + 3] & CPU_BOOTSTRAP != 0 {
                            bsp += 1;
                        }
                        seen_cpus += 1;
                        at += PROCESSOR_ENTRY_SIZE;
                    }
                    ENTRY_IOAPIC => {
                        ioapic = Some(u32::from_le_bytes(mpc[at + 4..at + 8].try_into().unwrap()));
                        at += ENTRY_SIZE;
                    }
                    ENTRY_IO_INTERRUPT => {
                        assert_eq!(mpc[at + 5], mpc[at + 7], "ISA IRQ = IOAPIC pin");
                        isa_irqs.push(mpc[at + 5]);
                        at += ENTRY_SIZE;
                    }
                    ENTRY_BUS | ENTRY_LOCAL_INTERRUPT => at += ENTRY_SIZE,
                    t => panic!("unknown entry type {t}"),
                }
            }
            assert_eq!(at, mpc.len());
            assert_eq!((seen_cpus, bsp), (cpus, 1));
            assert_eq!(ioapic, Some(layout::IOAPIC_START as u32));
            assert_eq!(isa_irqs, (0..16).collect::<Vec<u8>>());
            assert!(t.len() as u64 <= layout::MPTABLE_MAX_SIZE);
        }
    }

    #[test]
    fn cpu_counts_outside_8_bit_ids_are_refused() {
        assert!(build(0, layout::MPTABLE_START).is_err());
        assert!(build(256, layout::MPTABLE_START).is_err());
    }
}
