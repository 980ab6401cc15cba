//! virtio-pci devices seen by a real Linux guest (Debian's stock kernel, its virtio_pci and
//! device drivers loaded from the initramfs), nested in QEMU TCG with emulated AMD-V.
//! Every assertion is about what the guest itself printed.

use vireo_nested::{available, Kernel, Scenario};

/// What the guest reports about the rng device and the PCI bus it sits on.
const RNG_REPORT: &str = "\
echo PCI-IDS; cat /sys/bus/pci/devices/0000:00:01.0/vendor /sys/bus/pci/devices/0000:00:01.0/device | tr '\\n' ' '; echo
echo HOST-BRIDGE; cat /sys/bus/pci/devices/0000:00:00.0/class
echo DRIVER; basename $(readlink /sys/bus/pci/devices/0000:00:01.0/driver)
echo MMCONFIG; dmesg | grep -m1 'MMCONFIG at' || echo none
echo HWRNG; cat /sys/class/misc/hw_random/rng_current
echo RNG-BYTES; head -c 64 /dev/hwrng | od -An -tx1 -v | tr -d ' \\n'; echo
echo RNG-BYTES-AGAIN; head -c 64 /dev/hwrng | od -An -tx1 -v | tr -d ' \\n'; echo
echo MSIX; grep -o 'virtio0-[a-z]*' /proc/interrupts | sort | tr '\\n' ' '; echo
poweroff -f
";

#[test]
fn hwrng_delivers_bytes_from_virtio_rng() {
    let name = "hwrng_delivers_bytes_from_virtio_rng";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_kernel(Kernel::DebianStock)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script(RNG_REPORT)
        .vireo_args(&["--rng", "--memory", "256M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    // Modern virtio-rng (0x1040 + 4) in slot 1 behind the host bridge (class 06/00/00).
    assert_eq!(
        o.after("PCI-IDS"),
        Some("0x1af4 0x1044"),
        "{}",
        o.describe()
    );
    assert_eq!(o.after("HOST-BRIDGE"), Some("0x060000"), "{}", o.describe());
    assert_eq!(o.after("DRIVER"), Some("virtio-pci"), "{}", o.describe());
    assert_eq!(o.after("HWRNG"), Some("virtio_rng.0"), "{}", o.describe());
    // 64 bytes each time (128 hex digits), not all zero, and different each time.
    let a = o.after("RNG-BYTES").unwrap_or_default();
    let b = o.after("RNG-BYTES-AGAIN").unwrap_or_default();
    for bytes in [a, b] {
        assert_eq!(bytes.len(), 128, "{}", o.describe());
        assert!(bytes.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(bytes, "0".repeat(128));
    }
    assert_ne!(a, b, "{}", o.describe());
    // The driver took MSI-X: one vector for configuration changes, one for the queue.
    assert_eq!(
        o.after("MSIX"),
        Some("virtio0-config virtio0-input"),
        "{}",
        o.describe()
    );
    // Linux found the ECAM through the MCFG and trusted it (reserved in the DSDT).
    let mmconfig = o.after("MMCONFIG").unwrap_or_default();
    assert!(
        mmconfig.contains("0xe0000000") && mmconfig.contains("reserved"),
        "{}",
        o.describe()
    );
}

/// With MSI disabled in the guest (`pci=nomsi`) the same device interrupts through INTx:
/// the DSDT's _PRT routes slot 1's INTA# to GSI 17, a level-triggered IOAPIC line that
/// vireo raises while the ISR is set.
#[test]
fn hwrng_works_over_intx_without_msi() {
    let name = "hwrng_works_over_intx_without_msi";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_kernel(Kernel::DebianStock)
        .l2_cmdline("console=ttyS0 panic=-1 quiet pci=nomsi")
        .init_script(
            "echo RNG-BYTES; head -c 256 /dev/hwrng | od -An -tx1 -v | tr -d ' \\n'; echo\n\
             echo INTX; grep virtio0 /proc/interrupts | tr -s ' ' | cut -d' ' -f3-\n\
             poweroff -f",
        )
        .vireo_args(&["--rng", "--memory", "256M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    let bytes = o.after("RNG-BYTES").unwrap_or_default();
    assert_eq!(bytes.len(), 512, "{}", o.describe());
    assert_ne!(bytes, "0".repeat(512));
    // "<count> IO-APIC 17-fasteoi virtio0": one level-triggered line (GSI 17), no MSI-X
    // vectors, and it did fire.
    let intx = o.after("INTX").unwrap_or_default();
    assert!(
        intx.contains(" IO-APIC 17-fasteoi ") && intx.ends_with("virtio0"),
        "{}",
        o.describe()
    );
    let count: u64 = intx
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(count > 0, "{}", o.describe());
}
