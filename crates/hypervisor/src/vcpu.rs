//! A vCPU's architectural state at power-on, and register dumps for failure reports.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vireo_boot::{layout, BootEntry};
use vm_memory::{Bytes, GuestAddress};

use crate::cpuid::{self, CpuTemplate};
use crate::{kvm_op, Error, GuestMemoryMmap, Result};

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// MSRs initialised at power-on the way a PC firmware leaves them for Linux.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

// LAPIC register offsets and LVT delivery modes.
const APIC_SPIV: usize = 0xf0;
const APIC_SPIV_ENABLE: u32 = 1 << 8;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// One KVM vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
}

impl Vcpu {
    pub fn new(vm: &VmFd, index: u32) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_op("KVM_CREATE_VCPU"))?;
        Ok(Self { fd, index })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn fd(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU also gets `boot` registers. Other
    /// vCPUs stay in wait-for-SIPI, as on a PC, until the guest starts them.
    pub fn configure(
        &self,
        kvm: &Kvm,
        mem: &GuestMemoryMmap,
        template: CpuTemplate,
        vcpu_count: u32,
        boot: Option<BootEntry>,
    ) -> Result<()> {
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_op("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let entries = cpuid::vcpu_cpuid(
            supported.as_slice(),
            template,
            self.index,
            vcpu_count,
            tsc_deadline,
        );
        self.fd
            .set_cpuid2(&cpuid::to_kvm_cpuid(&entries))
            .map_err(kvm_op("KVM_SET_CPUID2"))?;
        if self.index == 0 {
            self.check_cpuid_honoured(&entries, template);
        }
        self.setup_msrs(kvm)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(kvm_op("KVM_SET_FPU"))?;
        self.setup_lapic()?;
        if let Some(boot) = boot {
            self.setup_boot_registers(mem, boot)?;
        }
        Ok(())
    }

    /// Some hosts (nested hypervisors that run guest user code natively) replace feature
    /// bits with the physical CPU's; a template that hides features cannot work there, and
    /// the user should know.
    fn check_cpuid_honoured(&self, set: &[kvm_bindings::kvm_cpuid_entry2], template: CpuTemplate) {
        let Ok(effective) = self.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) else {
            return;
        };
        for (function, reg) in [(1u32, "ECX"), (7, "EBX")] {
            let pick =
                |e: &kvm_bindings::kvm_cpuid_entry2| if function == 1 { e.ecx } else { e.ebx };
            let find = |list: &[kvm_bindings::kvm_cpuid_entry2]| {
                list.iter()
                    .find(|e| e.function == function && e.index == 0)
                    .map(pick)
            };
            let (Some(wanted), Some(got)) = (find(set), find(effective.as_slice())) else {
                continue;
            };
            // Bits vireo hid that the guest can see anyway (KVM may legitimately add
            // dynamic bits such as OSXSAVE, so only hidden-but-visible bits count).
            if got & !wanted & !cpuid::DYNAMIC_LEAF1_ECX != 0 {
                let msg = format!(
                    "this host's KVM overrides CPUID leaf {function:#x} {reg} (vireo set {wanted:#010x}, the guest sees {got:#010x})"
                );
                if template == CpuTemplate::Baseline {
                    log::warn!(
                        "{msg}: the `baseline` CPU template cannot hide those features here"
                    );
                } else {
                    log::debug!("{msg}");
                }
            }
        }
    }

    fn setup_msrs(&self, kvm: &Kvm) -> Result<()> {
        let supported = kvm
            .get_msr_index_list()
            .map_err(kvm_op("KVM_GET_MSR_INDEX_LIST"))?;
        let supported = supported.as_slice();
        let wanted: [(u32, u64); 11] = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
            // MTRRs enabled, default type write-back: all RAM is cacheable.
            (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
        ];
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .filter(|(index, _)| supported.contains(index))
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).expect("fixed, small MSR list");
        let written = self.fd.set_msrs(&msrs).map_err(kvm_op("KVM_SET_MSRS"))?;
        if written != entries.len() {
            let failed = entries.get(written).map_or(0, |e| e.index);
            log::warn!("KVM refused MSR {failed:#x}; continuing with its reset value");
        }
        Ok(())
    }

    /// Virtual-wire mode, as a PC BIOS leaves the local APIC: software-enabled, LINT0
    /// receives the 8259's ExtINT and LINT1 NMIs.
    fn setup_lapic(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(kvm_op("KVM_GET_LAPIC"))?;
        let mut update = |offset: usize, f: &dyn Fn(u32) -> u32| {
            let regs = &mut lapic.regs[offset..offset + 4];
            let v =
                u32::from_le_bytes([regs[0] as u8, regs[1] as u8, regs[2] as u8, regs[3] as u8]);
            for (dst, src) in regs.iter_mut().zip(f(v).to_le_bytes()) {
                *dst = src as _;
            }
        };
        update(APIC_SPIV, &|v| v | APIC_SPIV_ENABLE);
        update(APIC_LVT0, &|v| (v & !0x1_0700) | (APIC_MODE_EXTINT << 8));
        update(APIC_LVT1, &|v| (v & !0x1_0700) | (APIC_MODE_NMI << 8));
        self.fd.set_lapic(&lapic).map_err(kvm_op("KVM_SET_LAPIC"))
    }

    fn setup_boot_registers(&self, mem: &GuestMemoryMmap, boot: BootEntry) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
        let (regs, long_mode) = match boot {
            BootEntry::Pvh { entry, start_info } => (
                kvm_regs {
                    rflags: 0x2,
                    rip: entry,
                    rbx: start_info,
                    ..Default::default()
                },
                false,
            ),
            BootEntry::Linux64 { entry, zero_page } => (
                kvm_regs {
                    rflags: 0x2,
                    rip: entry,
                    rsp: layout::BOOT_STACK_POINTER,
                    rbp: layout::BOOT_STACK_POINTER,
                    rsi: zero_page,
                    ..Default::default()
                },
                true,
            ),
        };
        write_boot_gdt(mem, &mut sregs, long_mode)?;
        if long_mode {
            write_identity_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        } else {
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        self.fd.set_sregs(&sregs).map_err(kvm_op("KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs).map_err(kvm_op("KVM_SET_REGS"))
    }

    /// A human-readable register dump for failure reports.
    pub fn dump_registers(&self) -> String {
        let regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => return format!("(registers unavailable: {e})"),
        };
        let sregs = self.fd.get_sregs().ok();
        format_registers(&regs, sregs.as_ref())
    }
}

/// Formats general-purpose and control registers, one group per line.
pub fn format_registers(r: &kvm_regs, s: Option<&kvm_sregs>) -> String {
    let mut out = format!(
        "RIP={:016x} RSP={:016x} RFLAGS={:08x}\n\
         RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n\
         RSI={:016x} RDI={:016x} RBP={:016x}\n\
         R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\n\
         R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rbp,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15
    );
    if let Some(s) = s {
        let seg = |name: &str, g: &kvm_segment| {
            format!(
                "{name} ={:04x} base={:016x} limit={:08x} type={:x} dpl={} l={} db={}",
                g.selector, g.base, g.limit, g.type_, g.dpl, g.l, g.db
            )
        };
        out.push_str(&format!(
            "\n{}\n{}\nCR0={:016x} CR2={:016x} CR3={:016x} CR4={:016x} EFER={:016x}\n\
             GDT base={:016x} limit={:04x} IDT base={:016x} limit={:04x}",
            seg("CS", &s.cs),
            seg("SS", &s.ss),
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.gdt.base,
            s.gdt.limit,
            s.idt.base,
            s.idt.limit
        ));
    }
    out
}

/// Builds a GDT descriptor from flags, base and limit (in the x86 split encoding).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The kvm_segment KVM expects for a descriptor at GDT index `index`.
fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages; KVM wants bytes.
        limit: if granularity == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the boot GDT (null, code, data, TSS) and an empty IDT; loads flat segments.
fn write_boot_gdt(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs, long_mode: bool) -> Result<()> {
    // Code: present, DPL0, exec/read, accessed; 64-bit (L) or 32-bit (D/B), 4 KiB granular.
    let code_flags = if long_mode { 0xa09b } else { 0xc09b };
    let gdt = [
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| Error::GuestWrite(format!("boot GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|e| Error::GuestWrite(format!("boot IDT: {e}")))?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages (what the Linux 64-bit entry requires).
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|e| Error::GuestWrite(format!("boot page tables: {e}")))
    };
    // Present + writable at every level; PS for the 2 MiB leaves.
    w(layout::PML4_START, layout::PDPTE_START | 0x3)?;
    w(layout::PDPTE_START, layout::PDE_START | 0x3)?;
    for i in 0..512u64 {
        w(layout::PDE_START + i * 8, (i << 21) | 0x83)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.selector, code64.l, code64.db, code64.dpl),
            (8, 1, 0, 0)
        );
        assert_eq!(
            (code64.base, code64.limit, code64.type_),
            (0, 0xffff_ffff, 0xb)
        );
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!(
            (code32.l, code32.db, code32.present, code32.s),
            (0, 1, 1, 1)
        );
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.type_, data.unusable), (0x10, 3, 0));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), 3);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        let last: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn register_dump_names_rip() {
        let r = kvm_regs {
            rip: 0x1234,
            ..Default::default()
        };
        assert!(format_registers(&r, Some(&kvm_sregs::default())).contains("RIP=0000000000001234"));
    }
}
