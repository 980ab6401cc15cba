//! Boots the test guest under `qemu-system-x86_64 -accel tcg` and checks
//! its serial output. Skipped (with a printed reason) when QEMU is absent
//! (`apt-get install -y qemu-system-x86`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const TIMEOUT: Duration = Duration::from_secs(20);

fn find_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
}

struct Run {
    /// Raw serial output (bytes as the guest wrote them).
    raw: Vec<u8>,
    /// `None` if QEMU had to be killed at the timeout.
    status: Option<ExitStatus>,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).replace('\r', "")
    }

    /// The value after `key` on the first line starting with `prefix`.
    fn field(&self, prefix: &str, key: &str) -> Option<String> {
        let text = self.text();
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        let start = line.find(key)? + key.len();
        Some(
            line[start..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string(),
        )
    }
}

/// Boots the guest; returns None (after printing why) if QEMU is absent.
fn boot(extra: &[&str], cmdline: &str, timeout: Duration) -> Option<Run> {
    let Some(qemu) = find_qemu() else {
        println!("SKIP: {QEMU} not found in PATH (apt-get install -y qemu-system-x86)");
        return None;
    };
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-kernel",
            vireo_test_guest::PATH,
            "-append",
            cmdline,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait qemu") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let raw = reader.join().expect("reader thread");
    Some(Run { raw, status })
}

fn check_pass(smp: u32) {
    let cmdline = "vtg.action=poweroff console=ttyS0 some.key=\"a b\" x=1";
    let smp_arg = smp.to_string();
    let Some(run) = boot(
        &["-M", "pc", "-smp", &smp_arg, "-m", "64M", "-no-reboot"],
        cmdline,
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(
        run.status.is_some(),
        "vtg.action=poweroff did not make QEMU exit"
    );
    assert!(run.status.unwrap().success(), "QEMU exit status");
    assert_eq!(
        run.raw.first(),
        Some(&b'@'),
        "first serial byte must be '@'"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("vtg: result PASS checks=")),
        "no PASS result"
    );
    assert!(!text.contains("vtg: FAIL"), "a check failed");
    assert!(text.contains("vtg: boot 0\n"), "fresh VM boot counter");
    assert!(
        text.contains(&format!("vtg: cmdline={cmdline}\n")),
        "cmdline not verbatim"
    );
    assert_eq!(
        run.field("vtg: acpi ", "madt_cpus=").as_deref(),
        Some(smp_arg.as_str())
    );
    assert_eq!(
        run.field("vtg: smp ", "cpus_up=").as_deref(),
        Some(format!("{smp}/{smp}").as_str())
    );
    let ram: u64 = run
        .field("vtg: ram_total=", "ram_total=")
        .expect("ram_total")
        .parse()
        .expect("ram_total number");
    assert!(
        (60 << 20..=64 << 20).contains(&ram),
        "ram_total {ram} implausible for -m 64M"
    );
    let ticks: u64 = run
        .field("vtg: timer ", "ticks=")
        .expect("timer")
        .parse()
        .expect("ticks number");
    assert!(ticks >= 10);
    assert!(text.contains("vtg: ram_probe ok"));
    assert!(text.contains("vtg: action poweroff\n"));
}

#[test]
fn qemu_smp1_pass_and_poweroff() {
    check_pass(1);
}

#[test]
fn qemu_smp2_pass_and_poweroff() {
    check_pass(2);
}

#[test]
fn qemu_reboot_once_counts_boots() {
    // Without -no-reboot: boot 0 resets, boot 1 powers off.
    let Some(run) = boot(
        &["-M", "pc", "-smp", "1", "-m", "32M"],
        "vtg.action=reboot-once vtg.quick=1",
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(run.status.is_some(), "QEMU did not exit");
    assert!(text.contains("vtg: boot 0\n"));
    assert!(text.contains("vtg: boot 1\n"));
    assert_eq!(text.matches("vtg: result PASS").count(), 2);
    assert!(!text.contains("vtg: FAIL"));
}

#[test]
fn qemu_triple_fault_resets() {
    // With -no-reboot, a triple fault (reset) makes QEMU exit.
    let Some(run) = boot(
        &["-M", "pc", "-smp", "1", "-m", "16M", "-no-reboot"],
        "vtg.action=triple-fault vtg.quick=1 vtg.rsdp-scan=1",
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(run.status.is_some(), "QEMU did not exit after triple fault");
    assert!(text.contains("vtg: action triple-fault\n"));
    assert!(text.contains("vtg: acpi rsdp=ok"), "RSDP scan failed");
    assert!(!text.contains("vtg: FAIL"));
    assert_eq!(text.matches("vtg: boot").count(), 1);
}

#[test]
fn qemu_exception_is_reported() {
    let Some(run) = boot(
        &["-M", "pc", "-smp", "1", "-m", "16M", "-no-reboot"],
        "vtg.fault=ud2",
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(run.status.is_some(), "QEMU did not power off");
    assert!(text.contains("vtg: FAIL exception: vector=6 "));
    assert!(text.contains("vtg: result FAIL failed=exception\n"));
}

#[test]
fn qemu_hw_reduced_acpi_poweroff() {
    // microvm has a hardware-reduced FADT (like vireo): exercises the
    // SLEEP_CONTROL_REG poweroff path.
    let Some(run) = boot(
        &["-M", "microvm", "-smp", "2", "-m", "32M", "-no-reboot"],
        "vtg.quick=1 vtg.rsdp-scan=1",
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(
        run.status.is_some(),
        "hw-reduced poweroff did not exit QEMU"
    );
    assert_eq!(run.field("vtg: acpi ", "hw_reduced=").as_deref(), Some("1"));
    assert!(text.contains("vtg: result PASS"));
}

#[test]
fn qemu_2m_pages_and_ram_above_4g() {
    // No 1 GiB pages: the CPL0 fallback builds 2 MiB pages; RAM above
    // 4 GiB is probed through the window page directory.
    let Some(run) = boot(
        &[
            "-M",
            "pc",
            "-cpu",
            "max,pdpe1gb=off",
            "-smp",
            "1",
            "-m",
            "5G",
            "-no-reboot",
        ],
        "vtg.action=poweroff",
        TIMEOUT,
    ) else {
        return;
    };
    let text = run.text();
    println!("{text}");
    assert!(run.status.is_some(), "QEMU did not power off");
    assert!(text.contains("vtg: note paging=2m"));
    assert!(text.contains("vtg: ram_probe ok regions=3\n"));
    assert!(text.contains("vtg: result PASS"));
}
