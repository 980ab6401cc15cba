//! `vireo run` on real KVM with the purpose-built test guest: what the guest reports from
//! inside the VM must match what vireo was asked to build.

mod common;

use std::time::Duration;

use common::{kvm_or_skip, run_command, run_vireo, test_guest, Run, TempDir};

const TIMEOUT: Duration = Duration::from_secs(120);

/// RAM the guest sees: everything but the legacy hole between the EBDA and 1 MiB.
fn expected_ram(memory: u64) -> u64 {
    memory - (0x10_0000 - 0x9_fc00)
}

fn boot(args: &[&str], cmdline: &str) -> Run {
    let mut full = vec!["run", "--kernel", test_guest(), "--cmdline", cmdline];
    full.extend_from_slice(args);
    run_vireo(&full, TIMEOUT)
}

fn assert_passed(r: &Run) {
    assert!(
        r.guest_lines()
            .iter()
            .any(|l| *l == "result PASS" || l.starts_with("result PASS ")),
        "guest checks failed:\n{}",
        r.describe()
    );
}

#[test]
fn boots_and_powers_off_with_status_zero() {
    if !kvm_or_skip("boots_and_powers_off_with_status_zero") {
        return;
    }
    let cmdline = "console=ttyS0 vtg.action=poweroff some.flag=\"quoted value\" x=1";
    let r = boot(&["--memory", "64M", "--cpus", "1"], cmdline);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.stdout.starts_with('@'),
        "first guest output byte: {}",
        r.describe()
    );
    assert_passed(&r);
    let lines = r.guest_lines();
    assert!(
        lines.contains(&format!("cmdline={cmdline}").as_str()),
        "{}",
        r.describe()
    );
    assert_eq!(r.guest_field("start_info", "magic").as_deref(), Some("ok"));
    assert_eq!(
        r.guest_field("ram_total", "ram_total")
            .map(|v| v.parse::<u64>().unwrap()),
        Some(expected_ram(64 << 20)),
        "{}",
        r.describe()
    );
    assert_eq!(r.guest_field("acpi", "madt_cpus").as_deref(), Some("1"));
    assert_eq!(r.guest_field("acpi", "hw_reduced").as_deref(), Some("1"));
    assert!(lines.contains(&"action poweroff"), "{}", r.describe());
    assert_eq!(lines.iter().filter(|l| l.starts_with("boot ")).count(), 1);
}

#[test]
fn all_vcpus_come_up_with_a_consistent_topology() {
    if !kvm_or_skip("all_vcpus_come_up_with_a_consistent_topology") {
        return;
    }
    for cpus in [2u32, 4] {
        let r = boot(
            &["--memory", "64M", "--cpus", &cpus.to_string()],
            "console=ttyS0 vtg.action=poweroff",
        );
        assert_eq!(r.code(), Some(0), "{}", r.describe());
        assert_passed(&r);
        let n = cpus.to_string();
        assert_eq!(
            r.guest_field("acpi", "madt_cpus"),
            Some(n.clone()),
            "{}",
            r.describe()
        );
        assert_eq!(
            r.guest_field("smp", "cpus_up"),
            Some(format!("{cpus}/{cpus}")),
            "{}",
            r.describe()
        );
        assert_eq!(r.guest_field("cpuid", "leaf1_logical"), Some(n.clone()));
        assert_eq!(r.guest_field("cpuid", "leafB_logical"), Some(n));
        assert_eq!(r.guest_field("cpuid", "apic_id").as_deref(), Some("0"));
    }
}

#[test]
fn memory_above_the_4g_hole_is_usable() {
    if !kvm_or_skip("memory_above_the_4g_hole_is_usable") {
        return;
    }
    // 3.5 GiB: 3 GiB below the hole, 512 MiB above 4 GiB (sparse: only touched pages cost).
    let memory: u64 = 3584 << 20;
    let r = boot(&["--memory", "3584M"], "console=ttyS0 vtg.action=poweroff");
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert_passed(&r);
    assert_eq!(
        r.guest_field("ram_total", "ram_total")
            .map(|v| v.parse::<u64>().unwrap()),
        Some(expected_ram(memory))
    );
    let lines = r.guest_lines();
    assert!(
        lines.iter().any(|l| l.starts_with("e820 0x100000000 ")),
        "no e820 RAM entry at 4 GiB:\n{}",
        r.describe()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ram_probe ok")),
        "{}",
        r.describe()
    );
}

#[test]
fn timer_interrupts_and_rtc_reach_the_guest() {
    if !kvm_or_skip("timer_interrupts_and_rtc_reach_the_guest") {
        return;
    }
    let r = run_command(
        std::process::Command::new(common::vireo())
            .env("VIREO_LOG", "info")
            .args(["run", "--kernel", test_guest(), "--memory", "32M"])
            .args(["--cmdline", "console=ttyS0 vtg.action=poweroff"]),
        TIMEOUT,
    );
    // The guest writes 123 to the boot-progress port when its checks are done.
    assert!(
        r.stderr.contains("guest boot-complete marker after"),
        "{}",
        r.describe()
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    // Both timer paths: the local APIC timer and the PIT through the 8259 in virtual-wire
    // mode (LINT0 = ExtINT, set up by vireo).
    let ticks: u32 = r.guest_field("timer", "ticks").unwrap().parse().unwrap();
    let pit: u32 = r
        .guest_field("timer", "pit_ticks")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ticks >= 10 && pit >= 10, "{}", r.describe());
    // The guest's CMOS clock shows the host's UTC date and time (within a minute).
    let rtc = r
        .guest_lines()
        .into_iter()
        .find_map(|l| l.strip_prefix("rtc "))
        .unwrap_or_else(|| panic!("no rtc line:\n{}", r.describe()))
        .to_string();
    let host = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S"])
        .output()
        .unwrap();
    let host = String::from_utf8(host.stdout).unwrap();
    let to_secs = |s: &str| -> i64 {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", s, "+%s"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        (to_secs(&rtc) - to_secs(host.trim())).abs() <= 60,
        "guest rtc {rtc}, host {host}"
    );
}

#[test]
fn reboot_restarts_the_guest_and_cmos_survives() {
    if !kvm_or_skip("reboot_restarts_the_guest_and_cmos_survives") {
        return;
    }
    // First boot resets (counter 0 in CMOS NVRAM); second boot sees counter 1 and powers off.
    let r = boot(&["--memory", "32M"], "console=ttyS0 vtg.action=reboot-once");
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    let boots: Vec<&str> = r
        .guest_lines()
        .into_iter()
        .filter(|l| l.starts_with("boot "))
        .collect();
    assert_eq!(boots, ["boot 0", "boot 1"], "{}", r.describe());
}

#[test]
fn no_reboot_exits_on_reset() {
    if !kvm_or_skip("no_reboot_exits_on_reset") {
        return;
    }
    for action in ["reboot", "reset-kbd"] {
        let r = boot(
            &["--memory", "32M", "--no-reboot"],
            &format!("console=ttyS0 vtg.action={action}"),
        );
        assert_eq!(r.code(), Some(0), "{action}: {}", r.describe());
        let boots = r
            .guest_lines()
            .into_iter()
            .filter(|l| l.starts_with("boot "))
            .count();
        assert_eq!(boots, 1, "{action}: {}", r.describe());
        assert!(r
            .guest_lines()
            .contains(&format!("action {action}").as_str()));
    }
}

#[test]
fn triple_fault_is_reported_with_registers() {
    if !kvm_or_skip("triple_fault_is_reported_with_registers") {
        return;
    }
    let r = boot(
        &["--memory", "32M"],
        "console=ttyS0 vtg.action=triple-fault",
    );
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr
            .contains("vireo: error: the guest failed on vCPU 0"),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("triple fault"), "{}", r.describe());
    assert!(r.stderr.contains("RIP="), "{}", r.describe());
    assert!(r.stderr.contains("CR0="), "{}", r.describe());
}

#[test]
fn guest_panic_is_reported_not_rebooted() {
    if !kvm_or_skip("guest_panic_is_reported_not_rebooted") {
        return;
    }
    // The guest reports the panic through pvpanic and resets at once; vireo must end the
    // VM as a crash rather than boot it again.
    let r = boot(&["--memory", "32M"], "console=ttyS0 vtg.action=pvpanic");
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.guest_lines().contains(&"pvpanic features 3"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr
            .contains("vireo: error: the guest kernel panicked (reported through pvpanic)"),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.guest_lines()
            .iter()
            .filter(|l| l.starts_with("action"))
            .count(),
        1,
        "no second boot: {}",
        r.describe()
    );
}

#[test]
fn sigint_stops_the_vm_cleanly() {
    if !kvm_or_skip("sigint_stops_the_vm_cleanly") {
        return;
    }
    let dir = TempDir::new("sigint");
    let console = dir.path("console.log");
    let mut child = std::process::Command::new(common::vireo())
        .args([
            "run",
            "--kernel",
            test_guest(),
            "--memory",
            "32M",
            "--cpus",
            "2",
            "--console",
            &format!("file:{}", console.display()),
            "--cmdline",
            "console=ttyS0 vtg.action=halt",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest is idle in its halt loop.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let out = std::fs::read_to_string(&console).unwrap_or_default();
        if out.contains("vtg: action halt") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "guest never halted: {out}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "vireo exited early: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("SIGINT received; VM stopped"), "{stderr}");
}

#[test]
fn console_file_and_baseline_template() {
    if !kvm_or_skip("console_file_and_baseline_template") {
        return;
    }
    let dir = TempDir::new("consolefile");
    let console = dir.path("console.log");
    let r = run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--memory",
            "32M",
            "--cpu-template",
            "baseline",
            "--console",
            &format!("file:{}", console.display()),
            "--cmdline",
            "console=ttyS0 vtg.action=poweroff",
        ],
        TIMEOUT,
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(
        r.stdout.is_empty(),
        "console went to stdout: {}",
        r.describe()
    );
    let out = std::fs::read_to_string(&console).unwrap();
    assert!(out.contains("vtg: result PASS"), "{out}");
    // The baseline template hides CX16, POPCNT, XSAVE, OSXSAVE, AVX and all of leaf 7 --
    // where KVM honours the CPUID vireo sets. PVM (these CI machines) runs guest user code
    // natively and reports the physical CPU's features instead; vireo warns about that.
    let cpuid = out.lines().find(|l| l.contains("vtg: cpuid")).unwrap_or("");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            r.stderr
                .contains("the `baseline` CPU template cannot hide those features here"),
            "{}",
            r.describe()
        );
        eprintln!("NOTE console_file_and_baseline_template: PVM host overrides CPUID; feature masking not asserted");
        return;
    }
    let ecx = u32::from_str_radix(
        common::field(cpuid, "leaf1_ecx")
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    for bit in [13, 23, 26, 27, 28] {
        assert_eq!(ecx & (1 << bit), 0, "leaf 1 ECX bit {bit} visible: {cpuid}");
    }
    assert_ne!(ecx & (1 << 31), 0, "hypervisor bit: {cpuid}");
    assert_eq!(
        common::field(cpuid, "leaf7_ebx").as_deref(),
        Some("0x0"),
        "{cpuid}"
    );
}

/// FNV-1a 64, as the test guest computes it over the initrd it was given.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn every_kernel_format_boots_with_its_initrd() {
    if !kvm_or_skip("every_kernel_format_boots_with_its_initrd") {
        return;
    }
    let dir = TempDir::new("initrd");
    let initrd = dir.path("initrd.img");
    // 300 KB of deterministic, non-repeating bytes.
    let bytes: Vec<u8> = (0u32..300_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&initrd, &bytes).unwrap();
    let expected = format!("{:#x}", fnv1a(&bytes));
    let memory = 64u64 << 20;
    for (kernel, entry) in [
        (vireo_test_guest::PATH, "pvh"),
        (vireo_test_guest::NOPVH_ELF_PATH, "linux64"),
        (vireo_test_guest::BZIMAGE_PATH, "linux64"),
    ] {
        let cmdline = format!("console=ttyS0 vtg.action=poweroff kernel={entry}");
        let r = run_vireo(
            &[
                "run",
                "--kernel",
                kernel,
                "--initrd",
                initrd.to_str().unwrap(),
                "--memory",
                "64M",
                "--cpus",
                "2",
                "--cmdline",
                &cmdline,
            ],
            TIMEOUT,
        );
        assert_eq!(r.code(), Some(0), "{kernel}: {}", r.describe());
        assert_passed(&r);
        assert_eq!(
            r.guest_field("start_info", "entry").as_deref(),
            Some(entry),
            "{kernel}"
        );
        assert_eq!(
            r.guest_field("initrd", "size"),
            Some(bytes.len().to_string()),
            "{kernel}"
        );
        assert_eq!(
            r.guest_field("initrd", "fnv"),
            Some(expected.clone()),
            "{kernel}: {}",
            r.describe()
        );
        // Placed page-aligned at the top of RAM below the MMIO hole.
        let addr = u64::from_str_radix(
            r.guest_field("initrd", "addr")
                .unwrap()
                .trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(addr % 4096, 0);
        assert_eq!(addr, (memory - bytes.len() as u64) & !0xfff, "{kernel}");
        assert!(
            r.guest_lines()
                .contains(&format!("cmdline={cmdline}").as_str()),
            "{kernel}"
        );
        assert_eq!(
            r.guest_field("ram_total", "ram_total")
                .map(|v| v.parse::<u64>().unwrap()),
            Some(expected_ram(memory)),
            "{kernel}"
        );
    }
}

#[test]
fn initrd_too_large_for_memory_is_refused() {
    if !kvm_or_skip("initrd_too_large_for_memory_is_refused") {
        return;
    }
    let dir = TempDir::new("biginitrd");
    let initrd = dir.path("initrd.img");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(40 << 20).unwrap(); // sparse 40 MiB into a 32 MiB VM
    let r = run_vireo(
        &[
            "run",
            "--kernel",
            test_guest(),
            "--memory",
            "32M",
            "--initrd",
            initrd.to_str().unwrap(),
        ],
        TIMEOUT,
    );
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("does not fit in guest memory"),
        "{}",
        r.describe()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.describe());
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_or_skip("console_input_reaches_the_guest") {
        return;
    }
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(common::vireo())
        .args(["run", "--kernel", test_guest(), "--memory", "32M"])
        .args(["--cmdline", "console=ttyS0 vtg.quick=1 vtg.action=echo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // The guest announces it is listening; the test then types a line.
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("vtg: echo ready") {
            stdin.write_all(b"hello from the host\n").unwrap();
            stdin.flush().unwrap();
        }
        if line.contains("vtg: echo ") && !line.contains("ready") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("vtg: echo hello from the host"), "{seen}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}");
}

#[test]
fn kvm_internal_error_is_reported_with_registers() {
    if !kvm_or_skip("kvm_internal_error_is_reported_with_registers") {
        return;
    }
    // Only a host that instruction-emulates guest kernel code and lacks POPCNT in its
    // emulator (PVM, these CI machines) turns this into KVM_EXIT_INTERNAL_ERROR.
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("SKIP kvm_internal_error_is_reported_with_registers: needs a PVM host");
        return;
    }
    let r = boot(
        &["--memory", "32M"],
        "console=ttyS0 vtg.quick=1 vtg.action=popcnt-cpl0",
    );
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains(
            "vireo: error: the guest failed on vCPU 0: KVM internal error 1 (emulation failure"
        ),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("RIP="), "{}", r.describe());
}
