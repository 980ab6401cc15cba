//! The minimal guest kernel (Debian's linux-source-6.1 + crates/nested/kernel/config-6.1-vireo,
//! built once and cached under target/nested/kernels/) booted by vireo, nested, both as an
//! ELF vmlinux (PVH entry) and as a bzImage. Asserted on what the guest printed.

use vireo_nested::{available, utc_date_today, Kernel, Scenario};

fn boot(name: &str, kernel: Kernel) {
    if !available(name) {
        return;
    }
    // An explicit opt-out for runs without a persistent target/ (the first build costs
    // ~6 min on 2 cores).
    if std::env::var("VIREO_NESTED_NO_KERNEL_BUILD").as_deref() == Ok("1") {
        eprintln!("SKIP {name}: VIREO_NESTED_NO_KERNEL_BUILD=1");
        return;
    }
    let cmdline = format!("console=ttyS0 panic=-1 vireo.test={name}");
    let o = Scenario::new(name)
        .l2_kernel(kernel)
        .l2_cmdline(&cmdline)
        .init_script(
            "echo NPROC; nproc\n\
             echo MEMTOTAL; sed -n 's/^MemTotal: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo\n\
             echo DATE; date -u +%F\n\
             echo CMDLINE; cat /proc/cmdline\n\
             echo PVPANIC; ls /sys/bus/platform/drivers/pvpanic-mmio/ | grep -c QEMU0001\n\
             poweroff -f",
        )
        .vireo_args(&["--cpus", "2", "--memory", "128M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
    assert_eq!(o.after("NPROC"), Some("2"), "{}", o.describe());
    let total: u64 = o
        .after("MEMTOTAL")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{}", o.describe()));
    // 128 MiB minus the legacy hole and a small kernel's reservation.
    assert!(
        total < 128 * 1024 && total > 100 * 1024,
        "MemTotal {total} KiB\n{}",
        o.describe()
    );
    assert_eq!(
        o.after("DATE"),
        Some(utc_date_today().as_str()),
        "{}",
        o.describe()
    );
    assert_eq!(
        o.after("CMDLINE"),
        Some(cmdline.as_str()),
        "{}",
        o.describe()
    );
    assert_eq!(o.after("PVPANIC"), Some("1"), "{}", o.describe());
}

#[test]
fn minimal_kernel_pvh() {
    boot("minimal_kernel_pvh", Kernel::MinimalPvh);
}

#[test]
fn minimal_kernel_bzimage() {
    boot("minimal_kernel_bzimage", Kernel::MinimalBzImage);
}
