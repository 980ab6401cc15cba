//! Controlling running domains through the VMM control API: console, shutdown (ACPI power
//! button), suspend/resume, reboot/reset, on_crash/on_poweroff, domstats, setmem/setvcpus.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_or_skip, Daemon};

#[test]
fn console_is_interactive_and_logged() {
    if !kvm_or_skip("console_is_interactive_and_logged") {
        return;
    }
    let d = Daemon::start("console");
    let xml = d.guest_xml("con", "vtg.action=echo", "");
    d.ok(&["define", &xml]);
    // start --console sees the guest from its first byte; the line typed goes to the
    // guest, which echoes it and powers off, which ends the console.
    let mut child = Command::new(common::vireo_bin())
        .args(["-c", &d.uri, "start", "--console", "con"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello vireo\r")
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < common::TIMEOUT, "console did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("Domain 'con' started\n@"),
        "first guest byte missing:\n{stdout}"
    );
    assert!(stdout.contains("vtg: echo ready"), "{stdout}");
    assert!(stdout.contains("vtg: echo hello vireo"), "{stdout}");
    assert!(stderr.contains("Escape character is ^]"), "{stderr}");
    assert_eq!(d.wait_state("con", "shut off"), "shut off (shutdown)");
    // Everything the guest printed is in the console log too.
    let log = d.console_log("con");
    assert!(log.contains("vtg: echo hello vireo"), "{log}");

    // Ctrl-] detaches and leaves the VM running.
    let halt = d.guest_xml("idle", "vtg.action=halt", "");
    d.ok(&["define", &halt]);
    d.ok(&["start", "idle"]);
    let mut child = Command::new(common::vireo_bin())
        .args(["-c", &d.uri, "console", "idle"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\x1d").unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < common::TIMEOUT, "Ctrl-] did not detach");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(d.state("idle"), "running (booted)");
    d.ok(&["destroy", "idle"]);
}

#[test]
fn shutdown_presses_the_power_button() {
    if !kvm_or_skip("shutdown_presses_the_power_button") {
        return;
    }
    let d = Daemon::start("shutdown");
    let xml = d.guest_xml("pb", "vtg.action=wait-powerbutton", "");
    d.ok(&["define", &xml]);
    d.ok(&["start", "pb"]);
    d.wait_console("pb", "vtg: waiting for the power button");
    assert_eq!(
        d.ok(&["shutdown", "pb"]).trim(),
        "Domain 'pb' is being shutdown"
    );
    assert_eq!(d.wait_state("pb", "shut off"), "shut off (shutdown)");
    assert!(d.console_log("pb").contains("vtg: power button pressed"));
    let e = d.fails(&["shutdown", "pb"]);
    assert!(e.contains("is not running"), "{e}");
}

#[test]
fn suspend_resume_reset_and_stats() {
    if !kvm_or_skip("suspend_resume_reset_and_stats") {
        return;
    }
    let d = Daemon::start("suspend");
    let xml = d.guest_xml("s", "vtg.action=halt", "");
    d.ok(&["define", &xml]);
    d.ok(&["start", "s"]);
    d.wait_console("s", "vtg: action halt");
    d.ok(&["suspend", "s"]);
    assert_eq!(d.state("s"), "paused (user)");
    assert!(d.ok(&["list"]).contains("paused"));
    let e = d.fails(&["start", "s"]);
    assert!(e.contains("already running"), "{e}");
    d.ok(&["resume", "s"]);
    assert_eq!(d.state("s"), "running (unpaused)");
    let e = d.fails(&["resume", "s"]);
    assert!(e.contains("not paused"), "{e}");

    // reset and reboot restart the guest in the same VMM.
    let pid = d.vmm_pids();
    d.ok(&["reset", "s"]);
    d.wait_console("s", "vtg: boot 1");
    assert_eq!(
        d.ok(&["reboot", "s"]).trim(),
        "Domain 's' is being rebooted"
    );
    d.wait_console("s", "vtg: boot 2");
    assert_eq!(d.vmm_pids(), pid);
    assert!(d.state("s").starts_with("running"));

    let stats = d.ok(&["domstats", "s"]);
    assert!(stats.starts_with("Domain: 's'\n"), "{stats}");
    for key in [
        "  state.state=1",
        "  vcpu.current=1",
        "  balloon.maximum=32768",
        "  boots=3",
        "  vcpus.0.state=running",
    ] {
        assert!(stats.lines().any(|l| l == key), "'{key}' missing:\n{stats}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["domstats", "s", "--output", "json"])).unwrap();
    assert_eq!(json[0]["stats"]["memory.guest_bytes"], 32 << 20);
    d.ok(&["destroy", "s"]);
}

#[test]
fn lifecycle_actions_restart() {
    if !kvm_or_skip("lifecycle_actions_restart") {
        return;
    }
    let d = Daemon::start("actions");
    // on_crash=restart: a killed VMM comes back as a new process.
    let xml = d.guest_xml(
        "phoenix",
        "vtg.action=halt",
        "  <on_crash>restart</on_crash>\n",
    );
    d.ok(&["define", &xml]);
    d.ok(&["start", "phoenix"]);
    let first = d.vmm_pids();
    // SAFETY: kill has no memory effects; the pid is the VMM this test started.
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    let start = Instant::now();
    loop {
        let now = d.vmm_pids();
        if now.len() == 1 && now != first && d.state("phoenix").starts_with("running") {
            break;
        }
        assert!(
            start.elapsed() < common::TIMEOUT,
            "not restarted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok(&["destroy", "phoenix"]);
    assert_eq!(d.state("phoenix"), "shut off (destroyed)");

    // on_poweroff=restart: the guest powers off and is started again.
    let xml = d.guest_xml(
        "again",
        "vtg.action=poweroff",
        "  <on_poweroff>restart</on_poweroff>\n",
    );
    d.ok(&["define", &xml]);
    d.ok(&["start", "again"]);
    let start = Instant::now();
    while d
        .console_log("again")
        .matches("vtg: action poweroff")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "not restarted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The loop ends with destroy (which never restarts).
    let start = Instant::now();
    while !d.vireo(&["destroy", "again"]).ok() {
        assert!(start.elapsed() < common::TIMEOUT);
    }
    assert_eq!(d.state("again"), "shut off (destroyed)");
}

#[test]
fn config_changes_apply_to_the_definition() {
    let d = Daemon::start("setmem");
    let xml = d.guest_xml("m", "vtg.action=halt", "");
    d.ok(&["define", &xml]);
    d.ok(&["setmaxmem", "m", "64M", "--config"]);
    d.ok(&["setmem", "m", "48M", "--config"]);
    d.ok(&["setvcpus", "m", "2", "--config", "--maximum"]);
    d.ok(&["setvcpus", "m", "2", "--config"]);
    let info = d.ok(&["dominfo", "m"]);
    assert!(info.contains("Max memory:     65536 KiB"), "{info}");
    assert!(info.contains("Used memory:    49152 KiB"), "{info}");
    assert!(info.contains("CPU(s):         2"), "{info}");
    let xml = std::fs::read_to_string(d.path("etc/vireo/domains/m.xml")).unwrap();
    assert!(
        xml.contains("<currentMemory unit='KiB'>49152</currentMemory>"),
        "{xml}"
    );
    let e = d.fails(&["setmem", "m", "128M", "--config"]);
    assert!(e.contains("more than the maximum"), "{e}");
    let e = d.fails(&["setvcpus", "m", "0", "--config"]);
    assert!(e.contains("at least 1"), "{e}");
    if kvm_or_skip("config_changes_apply_to_the_definition (live part)") {
        d.ok(&["start", "m"]);
        let e = d.fails(&["setmem", "m", "32M"]);
        assert!(e.contains("use --config"), "{e}");
        d.wait_console("m", "madt_cpus=2");
        d.ok(&["destroy", "m"]);
    }
}

#[test]
fn setmem_on_a_running_domain_goes_through_the_balloon() {
    if !kvm_or_skip("setmem_on_a_running_domain_goes_through_the_balloon") {
        return;
    }
    let d = Daemon::start("setmem-live");
    // The test guest's balloon driver inflates a page, then waits for a new target.
    let xml = d.guest_xml(
        "b",
        "vtg.action=virtio-balloon vtg.balloon-wait=1",
        "  <devices><memballoon model='virtio'/></devices>\n",
    );
    d.ok(&["define", &xml]);
    d.ok(&["start", "b"]);
    d.wait_console("b", "virtio-balloon PASS");
    // The driver reports one page in the balloon: domstats shows the guest's size.
    let start = std::time::Instant::now();
    loop {
        let stats = d.ok(&["domstats", "b"]);
        if stats.lines().any(|l| l == "  balloon.current=32764") {
            break;
        }
        assert!(start.elapsed() < common::TIMEOUT, "{stats}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = d.fails(&["setmem", "b", "64M"]);
    assert!(e.contains("more than the maximum"), "{e}");
    // 32 MiB → 16 MiB: a balloon of 16 MiB, 4096 pages, read by the guest's driver.
    d.ok(&["setmem", "b", "16M"]);
    let info = d.ok(&["dominfo", "b"]);
    assert!(info.contains("Used memory:    16384 KiB"), "{info}");
    d.wait_console("b", "virtio-balloon new-target=4096");
    // Live only: the persistent definition keeps its memory.
    let xml = std::fs::read_to_string(d.path("etc/vireo/domains/b.xml")).unwrap();
    assert!(!xml.contains("16384"), "{xml}");
    d.wait_state("b", "shut off");
}

#[test]
fn install_writes_a_definition_virt_install_style() {
    let d = Daemon::start("install");
    let guest = common::test_guest();
    let boot = format!("kernel={guest},kernel_args=console=ttyS0 vtg.quick=1 vtg.action=halt");
    // --print-xml with a disk and a bridge: XML the daemon accepts.
    let xml = d.ok(&[
        "install",
        "--name",
        "full",
        "--memory",
        "64",
        "--vcpus",
        "2",
        "--disk",
        "/var/lib/vireo/images/full.qcow2",
        "--network",
        "bridge=br0",
        "--boot",
        &boot,
        "--import",
        "--print-xml",
    ]);
    let file = d.path("full.xml");
    std::fs::write(&file, &xml).unwrap();
    d.ok(&["define", file.to_str().unwrap()]);
    let blk = d.ok(&["domblklist", "full"]);
    assert!(
        blk.contains("vda      /var/lib/vireo/images/full.qcow2"),
        "{blk}"
    );
    let ifs = d.ok(&["domiflist", "full"]);
    assert!(
        ifs.contains("bridge") && ifs.contains("br0") && ifs.contains("virtio"),
        "{ifs}"
    );
    let e = d.fails(&[
        "install",
        "--name",
        "x",
        "--boot",
        "initrd=/i",
        "--print-xml",
    ]);
    assert!(e.contains("kernel=PATH"), "{e}");

    if kvm_or_skip("install_writes_a_definition_virt_install_style (start)") {
        let out = d.ok(&[
            "install",
            "--name",
            "inst",
            "--memory",
            "32",
            "--boot",
            &boot,
            "--import",
            "--noautoconsole",
        ]);
        assert_eq!(out, "Domain 'inst' defined\nDomain 'inst' started\n");
        d.wait_console("inst", "vtg: action halt");
        assert!(d.ok(&["list", "--name"]).lines().any(|l| l == "inst"));
        d.ok(&["destroy", "inst"]);
    }
}
