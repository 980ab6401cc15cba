//! Real Linux (Debian's stock kernel) booted by vireo, nested in QEMU TCG with emulated
//! AMD-V. Every assertion is about what the guest itself printed.

use vireo_nested::modules::STOCK_L2_MODULES;
use vireo_nested::{available, utc_date_today, Kernel, Outcome, Scenario};

/// What the guest reports about itself; each value follows a label line.
const REPORT: &str = "\
echo NPROC; nproc
echo MEMTOTAL; sed -n 's/^MemTotal: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo
echo MEMORY-LINE; dmesg | grep -m1 'Memory: '
echo DATE; date -u +%F
echo CMDLINE; cat /proc/cmdline
echo ONLINE; cat /sys/devices/system/cpu/online
echo MODULES; cut -d' ' -f1 /proc/modules | sort | tr '\n' ' '; echo
echo PVPANIC; ls /sys/bus/platform/drivers/pvpanic-mmio/ | grep -c QEMU0001
";

/// RAM the kernel manages, in KiB, for a vireo guest of `mib` MiB: vireo's e820 RAM is
/// 0..0x9fc00 and 1 MiB..end; Linux keeps whole pages only (0x9f000..0x9fc00 is dropped)
/// and reserves page 0, leaving 0x1000..0x9f000 and 1 MiB..end.
fn managed_kib(mib: u64) -> u64 {
    ((0x9_f000 - 0x1000) + (mib << 20) - 0x10_0000) / 1024
}

fn check_report(o: &Outcome, cpus: u32, mib: u64, cmdline: &str) {
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
    assert_eq!(
        o.after("NPROC"),
        Some(cpus.to_string().as_str()),
        "{}",
        o.describe()
    );
    let online = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(o.after("ONLINE"), Some(online.as_str()), "{}", o.describe());
    // "Memory: 199428K/261752K available (...)": the second number is all RAM the kernel
    // manages, which must be exactly what vireo's e820 map gives.
    let line = o.after("MEMORY-LINE").unwrap_or_default();
    let managed: u64 = line
        .split_once('/')
        .and_then(|(_, r)| r.split_once('K'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no Memory: line\n{}", o.describe()));
    assert_eq!(managed, managed_kib(mib), "{}", o.describe());
    let total: u64 = o
        .after("MEMTOTAL")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{}", o.describe()));
    // MemTotal = managed RAM minus what the kernel reserved for itself (image, memmap,
    // early allocations): below the RAM, and for Debian's kernel within 80 MiB of it.
    assert!(
        total < managed && total > managed - 80 * 1024,
        "MemTotal {total} KiB vs {managed} KiB managed\n{}",
        o.describe()
    );
    let date = o.after("DATE").unwrap_or_default().to_string();
    let today = utc_date_today();
    assert!(
        date == today || date == utc_date_today(),
        "guest date {date}, host {today}\n{}",
        o.describe()
    );
    assert_eq!(o.after("CMDLINE"), Some(cmdline), "{}", o.describe());
    // The initramfs carries the stock kernel's driver modules and loads them, as a
    // distribution's does; pvpanic binds to vireo's ACPI QEMU0001 device.
    assert_eq!(o.count("VIREO-L2-ERROR"), 0, "{}", o.describe());
    let loaded: Vec<&str> = o.after("MODULES").unwrap_or_default().split(' ').collect();
    for m in STOCK_L2_MODULES {
        assert!(loaded.contains(m), "{m} not loaded\n{}", o.describe());
    }
    assert_eq!(o.after("PVPANIC"), Some("1"), "{}", o.describe());
}

fn report_boot(name: &str, kernel: Kernel, cpus: u32, mib: u64) {
    if !available(name) {
        return;
    }
    let cmdline = format!("console=ttyS0 panic=-1 quiet vireo.test={name} x=\"a b\"");
    let o = Scenario::new(name)
        .l2_kernel(kernel)
        .l2_cmdline(&cmdline)
        .init_script(&format!("{REPORT}\npoweroff -f"))
        .vireo_args(&["--cpus", &cpus.to_string(), "--memory", &format!("{mib}M")])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    check_report(&o, cpus, mib, &cmdline);
}

#[test]
fn debian_kernel_1_cpu() {
    report_boot("debian_kernel_1_cpu", Kernel::DebianStock, 1, 256);
}

#[test]
fn debian_kernel_2_cpus() {
    report_boot("debian_kernel_2_cpus", Kernel::DebianStock, 2, 256);
}

#[test]
fn debian_kernel_4_cpus_512m() {
    report_boot("debian_kernel_4_cpus_512m", Kernel::DebianStock, 4, 512);
}

/// The same kernel as an ELF vmlinux: vireo takes the PVH entry.
#[test]
fn debian_kernel_pvh_2_cpus() {
    report_boot("debian_kernel_pvh_2_cpus", Kernel::DebianStockPvh, 2, 256);
}

/// Shell functions reading and writing CMOS NVRAM through /dev/port (index 0x70, data
/// 0x71). vireo keeps NVRAM across guest resets, so a script can count boots there: the
/// initramfs itself is fresh on every boot.
const CMOS: &str = r#"
cmos_idx() { printf "\\$(printf %o $1)" | dd of=/dev/port bs=1 seek=112 count=1 conv=notrunc 2>/dev/null; }
cmos_rd() { cmos_idx $1; dd if=/dev/port bs=1 skip=113 count=1 2>/dev/null | od -An -tu1 | tr -d ' '; }
cmos_wr() { cmos_idx $1; printf "\\$(printf %o $2)" | dd of=/dev/port bs=1 seek=113 count=1 conv=notrunc 2>/dev/null; }
n=$(cmos_rd 80)
echo "BOOT-COUNT $n"
"#;

/// `reboot -f` resets the guest and vireo boots it again (same VM, NVRAM kept); the second
/// boot powers off and vireo exits 0.
#[test]
fn reboot_restarts_the_guest() {
    let name = "reboot_restarts_the_guest";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script(&format!(
            "{CMOS}\nif [ \"$n\" = 0 ]; then cmos_wr 80 1; reboot -f; else cmos_wr 80 0; poweroff -f; fi"
        ))
        .vireo_args(&["--cpus", "2", "--memory", "256M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(o.count("VIREO-L2-INIT"), 2, "{}", o.describe());
    assert_eq!(o.count("BOOT-COUNT 0"), 1, "{}", o.describe());
    assert_eq!(o.count("BOOT-COUNT 1"), 1, "{}", o.describe());
}

/// With `--no-reboot`, the guest's reset ends vireo with status 0 after one boot.
#[test]
fn reboot_with_no_reboot_ends_vireo() {
    let name = "reboot_with_no_reboot_ends_vireo";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script("echo REBOOTING; reboot -f")
        .vireo_args(&["--cpus", "1", "--memory", "256M", "--no-reboot"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
    assert_eq!(o.count("REBOOTING"), 1, "{}", o.describe());
    assert!(o.vireo_stderr.contains("reset"), "{}", o.describe());
}

/// A kernel panic with `panic=-1` would reset the guest at once; pvpanic tells vireo it
/// was a crash, so vireo ends the VM and says so (status 1) instead of booting again.
#[test]
fn kernel_panic_is_reported() {
    let name = "kernel_panic_is_reported";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script("echo c > /proc/sysrq-trigger")
        .vireo_args(&["--cpus", "1", "--memory", "256M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert!(
        o.l2_console
            .contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{}",
        o.describe()
    );
    assert_eq!(o.vireo_status, Some(1), "{}", o.describe());
    assert!(
        o.vireo_stderr
            .contains("vireo: error: the guest kernel panicked (reported through pvpanic)"),
        "{}",
        o.describe()
    );
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
}

/// init exiting panics the kernel ("Attempted to kill init"): reported the same way.
#[test]
fn init_exit_panic_is_reported() {
    let name = "init_exit_panic_is_reported";
    if !available(name) {
        return;
    }
    let o = Scenario::new(name)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .init_script("echo EXITING; exit 3")
        .vireo_args(&["--cpus", "1", "--memory", "256M"])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert!(
        o.l2_console
            .contains("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000300"),
        "{}",
        o.describe()
    );
    assert_eq!(o.count("VIREO-L2-INIT"), 1, "{}", o.describe());
    assert_eq!(o.vireo_status, Some(1), "{}", o.describe());
    assert!(
        o.vireo_stderr.contains("the guest kernel panicked"),
        "{}",
        o.describe()
    );
}
