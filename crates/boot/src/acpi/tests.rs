use super::*;
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::process::Command;
use vm_memory::GuestMemoryMmap;

fn guest_mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .unwrap_or_else(|e| panic!("{len} bytes at {addr:#x} not in guest memory: {e}"));
    v
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole table at `addr` from its header length, checking its checksum.
fn table(mem: &GuestMemoryMmap<()>, addr: u64) -> Vec<u8> {
    let hdr = read(mem, addr, 36);
    let t = read(mem, addr, u32_at(&hdr, 4) as usize);
    assert_eq!(
        sum(&t),
        0,
        "checksum of {}",
        String::from_utf8_lossy(&t[..4])
    );
    assert!(
        addr >= layout::ACPI_START
            && addr + t.len() as u64 <= layout::ACPI_START + layout::ACPI_SIZE
    );
    t
}

/// Follows RSDP → XSDT → tables (and FADT → DSDT); returns tables by signature.
fn walk(mem: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> BTreeMap<String, Vec<u8>> {
    assert_eq!(rsdp_addr.0, layout::ACPI_START);
    assert_eq!(rsdp_addr.0 % 16, 0);
    let rsdp = read(mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");

    let xsdt = table(mem, u64_at(&rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let mut tables = BTreeMap::new();
    for entry in xsdt[36..].chunks(8) {
        let t = table(mem, u64::from_le_bytes(entry.try_into().unwrap()));
        tables.insert(String::from_utf8(t[..4].to_vec()).unwrap(), t);
    }
    let fadt = &tables["FACP"];
    assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
    let dsdt = table(mem, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    tables.insert("DSDT".into(), dsdt);
    tables.insert("XSDT".into(), xsdt);
    tables
}

fn build(num_cpus: u32) -> BTreeMap<String, Vec<u8>> {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus,
            pci: Some(PCI),
        },
    )
    .unwrap();
    walk(&mem, rsdp)
}

const PCI: PciHostConfig = PciHostConfig {
    mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
    mmio64: (1 << 32, layout::PCI_MMIO64_SIZE),
};

#[test]
fn without_pci_there_is_no_mcfg_and_no_pci0() {
    let mem = guest_mem();
    let rsdp = create_acpi_tables(&mem, &AcpiConfig::default()).unwrap();
    let t = walk(&mem, rsdp);
    assert!(!t.contains_key("MCFG"));
    assert!(!contains(&t["DSDT"], b"PCI0"));
}

#[test]
fn mcfg_points_at_the_ecam_for_bus_0() {
    let t = build(1);
    let m = &t["MCFG"];
    assert_eq!(m.len(), 44 + 16);
    assert_eq!(u64_at(m, 44), layout::PCI_ECAM_START);
    assert_eq!(&m[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pointers_resolve_and_checksums_hold() {
    let t = build(2);
    let sigs: Vec<_> = t.keys().cloned().collect();
    assert_eq!(sigs, ["APIC", "DSDT", "FACP", "MCFG", "XSDT"]);
}

/// Generic Address Structure: space, bit width, bit offset, access size, address.
fn gas(b: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
    (
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
        u64_at(b, off + 4),
    )
}

#[test]
fn fadt_describes_hw_reduced_sleep_and_reset() {
    let t = build(1);
    let f = &t["FACP"];
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "FADT major revision");
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(f[108], 0x32, "century");
    let boot_arch = u16::from_le_bytes([f[109], f[110]]);
    assert_eq!(
        boot_arch & 0b1110,
        0,
        "no 8042, VGA and MSI not flagged absent"
    );
    assert_eq!(gas(f, 116), (1, 8, 0, 1, ports::ACPI_RESET.into()));
    assert_eq!(f[128], ports::ACPI_RESET_VALUE);
    assert_eq!(gas(f, 244), (1, 8, 0, 1, ports::ACPI_SLEEP_CONTROL.into()));
    assert_eq!(gas(f, 256), (1, 8, 0, 1, ports::ACPI_SLEEP_STATUS.into()));
    assert_eq!(&f[268..276], b"VIREO\0\0\0");
}

/// MADT entries as (type, bytes).
fn madt_entries(m: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 44;
    while off < m.len() {
        let len = m[off + 1] as usize;
        assert!(len >= 2 && off + len <= m.len(), "malformed MADT entry");
        out.push(&m[off..off + len]);
        off += len;
    }
    out
}

#[test]
fn madt_has_one_enabled_lapic_per_cpu() {
    for n in [1u32, 2, 4, 255] {
        let t = build(n);
        let m = &t["APIC"];
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40) & 1, 1, "PCAT_COMPAT");
        let e = madt_entries(m);
        let lapics: Vec<_> = e.iter().filter(|e| e[0] == 0).collect();
        assert_eq!(lapics.len(), n as usize);
        for (i, l) in lapics.iter().enumerate() {
            assert_eq!((l[2], l[3]), (i as u8, i as u8), "UID and APIC ID");
            assert_eq!(u32_at(l, 4) & 1, 1, "enabled");
        }
        let ioapics: Vec<_> = e.iter().filter(|e| e[0] == 1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][2], 0);
        assert_eq!(u32_at(ioapics[0], 4) as u64, layout::IOAPIC_START);
        assert_eq!(u32_at(ioapics[0], 8), 0);
        let nmis: Vec<_> = e.iter().filter(|e| e[0] == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0][2], nmis[0][5]), (0xff, 1));
        assert!(e.iter().all(|e| e[0] != 2), "no interrupt source override");
    }
}

#[test]
fn rejects_zero_and_too_many_cpus() {
    let mem = guest_mem();
    assert!(matches!(
        create_acpi_tables(
            &mem,
            &AcpiConfig {
                num_cpus: 0,
                pci: None
            }
        ),
        Err(AcpiError::NoCpus)
    ));
    let err = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 256,
            pci: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, AcpiError::TooManyCpus(256)));
    assert!(err.to_string().contains("at most 255"), "{err}");
}

#[test]
fn missing_guest_memory_is_an_error() {
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(&mem, &AcpiConfig::default()),
        Err(AcpiError::GuestMemory(_))
    ));
}

#[test]
fn dsdt_names_the_platform_devices() {
    let t = build(4);
    let d = &t["DSDT"];
    for needle in [
        &b"_S5_"[..],
        b"ACPI0013",
        b"ACPI0007",
        b"PWRB",
        b"GED_",
        b"_EVT",
        b"C003",
    ] {
        assert!(contains(d, needle), "{}", String::from_utf8_lossy(needle));
    }
    // EISAID("PNP0C0C") is a compressed dword: 0x0c0cd041 little-endian.
    assert!(contains(d, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
    assert!(!contains(d, b"C004"));
}

/// Runs `iasl` with `args` in `dir`; returns stdout+stderr, or None when iasl is missing.
fn iasl(dir: &FsPath, args: &[&str]) -> Option<(bool, String)> {
    match Command::new("iasl").args(args).current_dir(dir).output() {
        Ok(o) => Some((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running iasl: {e}"),
    }
}

/// Peer-tool check: ACPICA's disassembler must accept every table, and the disassembled
/// DSDT must recompile cleanly.
#[test]
fn iasl_disassembles_the_tables() {
    let dir = std::env::temp_dir().join(format!("vireo-acpi-iasl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = build(4);
    for (sig, file) in [
        ("DSDT", "dsdt"),
        ("FACP", "facp"),
        ("APIC", "apic"),
        ("XSDT", "xsdt"),
        ("MCFG", "mcfg"),
    ] {
        std::fs::write(dir.join(format!("{file}.dat")), &t[sig]).unwrap();
    }

    let expect: [(&str, &[&str]); 5] = [
        (
            "dsdt",
            &[
                "Name (_S5, Package (0x04)  // _S5_",
                "0x05,",
                "EisaId (\"PNP0C0C\")",
                "\"ACPI0013\"",
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {\n                    0x00000009,",
                "If ((Local0 & One))",
                "\"ACPI0007\"",
                "Method (_EVT, 1, Serialized)",
                "Notify (\\_SB.PWRB, 0x80)",
                "EisaId (\"PNP0501\")",
                "EisaId (\"PNP0B00\")",
                "\"QEMU0001\"",
                "IO (Decode16,\n                    0x0505,",
                "SystemMemory, 0xF0000000",
                "EisaId (\"PNP0A08\")",
                "EisaId (\"PNP0A03\")",
                "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
                "0x0001,             // Length",
                "0x0CF8,             // Range Minimum",
                "0xC0000000,         // Range Minimum",
                "0xDFFFFFFF,         // Range Maximum",
                "0x0000000100000000, // Range Minimum",
                "0x0000000800000000, // Length",
                "Name (_PRT, Package (0x7C)",
                "0x0001FFFF, ",
                "EisaId (\"PNP0C02\")",
                "Memory32Fixed (ReadOnly,",
                "0xE0000000,         // Address Base",
                "0x00100000,         // Address Length",
            ],
        ),
        (
            "mcfg",
            &["Base Address : 00000000E0000000", "End Bus Number : 00"],
        ),
        (
            "facp",
            &[
                "Hardware Reduced (V5) : 1",
                "Reset Register Supported (V2) : 1",
                "RTC Century Index : 32",
                "Value to cause reset : 01",
                "Address : 0000000000000602",
                "Address : 0000000000000600",
                "Address : 0000000000000601",
            ],
        ),
        ("apic", &["Processor Local APIC", "I/O APIC", "Local APIC NMI"]),
        ("xsdt", &["ACPI Table Address"]),
    ];
    for (file, needles) in expect {
        let Some((ok, out)) = iasl(&dir, &["-d", &format!("{file}.dat")]) else {
            eprintln!("SKIPPED: `iasl` not found; install Debian package acpica-tools");
            return;
        };
        assert!(ok, "iasl -d {file}.dat failed:\n{out}");
        assert!(!out.contains("Error"), "iasl -d {file}.dat:\n{out}");
        let dsl = std::fs::read_to_string(dir.join(format!("{file}.dsl"))).unwrap();
        assert!(!dsl.contains("**** "), "iasl flagged {file}:\n{dsl}");
        for n in needles {
            assert!(dsl.contains(n), "{file}.dsl lacks {n:?}:\n{dsl}");
        }
    }
    // Round trip: the disassembled DSDT compiles again without errors or warnings.
    let (ok, out) = iasl(&dir, &["-p", "recompiled", "dsdt.dsl"]).unwrap();
    assert!(ok, "recompiling dsdt.dsl failed:\n{out}");
    assert!(out.contains(" 0 Errors, 0 Warnings"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
