//! Domains on real KVM with the test guest, through the `vireo` CLI and `vireod`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_or_skip, Daemon};

#[test]
fn define_start_list_console_destroy_undefine() {
    if !kvm_or_skip("define_start_list_console_destroy_undefine") {
        return;
    }
    let d = Daemon::start("lifecycle");
    let xml = d.guest_xml("vm1", "vtg.action=halt", "");
    let out = d.ok(&["define", &xml]);
    assert_eq!(out.trim(), format!("Domain 'vm1' defined from {xml}"));
    assert_eq!(d.ok(&["list"]).lines().count(), 3, "nothing runs yet");
    assert!(d.ok(&["list", "--all"]).contains(" vm1    shut off"));
    assert_eq!(d.ok(&["start", "vm1"]).trim(), "Domain 'vm1' started");
    let list = d.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "vm1", "running"]),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["list", "--output", "json"])).unwrap();
    assert_eq!(json[0]["name"], "vm1");
    assert_eq!(json[0]["state"], "running");
    assert_eq!(json[0]["id"], 1);
    // The guest's serial output reaches the console log.
    let console = d.wait_console("vm1", "vtg: action halt");
    assert!(
        console.contains("vtg: cmdline=console=ttyS0 vtg.quick=1 vtg.action=halt"),
        "{console}"
    );
    let e = d.fails(&["start", "vm1"]);
    assert!(e.contains("already running"), "{e}");
    let e = d.fails(&["undefine", "vm1"]);
    assert!(e.contains("is running"), "{e}");
    let info = d.ok(&["dominfo", "1"]);
    assert!(info.contains("State:          running"), "{info}");
    assert!(info.contains("Max memory:     32768 KiB"), "{info}");
    assert_eq!(d.ok(&["destroy", "vm1"]).trim(), "Domain 'vm1' destroyed");
    assert_eq!(d.state("vm1"), "shut off (destroyed)");
    assert!(d.vmm_pids().is_empty());
    let dumped = d.ok(&["dumpxml", "vm1"]);
    assert!(
        dumped.contains("<name>vm1</name>") && dumped.contains("<uuid>"),
        "{dumped}"
    );
    d.ok(&["undefine", "vm1"]);
    assert_eq!(d.ok(&["list", "--all", "--name"]).trim(), "");
    assert!(!d.path("etc/vireo/domains/vm1.xml").exists());
}

#[test]
fn guest_poweroff_and_vmm_crash_are_told_apart() {
    if !kvm_or_skip("guest_poweroff_and_vmm_crash_are_told_apart") {
        return;
    }
    let d = Daemon::start("ends");
    let off = d.guest_xml("off", "vtg.action=poweroff", "");
    d.ok(&["define", &off]);
    d.ok(&["start", "off"]);
    assert_eq!(d.wait_state("off", "shut off"), "shut off (shutdown)");
    assert!(d.console_log("off").contains("vtg: action poweroff"));

    let halt = d.guest_xml("victim", "vtg.action=halt", "");
    d.ok(&["define", &halt]);
    d.ok(&["start", "victim"]);
    let pids = d.vmm_pids();
    assert_eq!(pids.len(), 1);
    // SAFETY: kill has no memory effects; the pid is the VMM this test started.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let s = d.wait_state("victim", "crashed");
    assert!(s.contains("SIGKILL"), "{s}");
    // A crashed domain starts again.
    d.ok(&["start", "victim"]);
    d.ok(&["destroy", "victim"]);
}

#[test]
fn transient_domains_vanish_when_stopped() {
    if !kvm_or_skip("transient_domains_vanish_when_stopped") {
        return;
    }
    let d = Daemon::start("transient");
    let xml = d.guest_xml("tmp", "vtg.action=halt", "");
    assert_eq!(
        d.ok(&["create", &xml]).trim(),
        format!("Domain 'tmp' created from {xml}")
    );
    let info = d.ok(&["dominfo", "tmp"]);
    assert!(info.contains("Persistent:     no"), "{info}");
    let e = d.fails(&["autostart", "tmp"]);
    assert!(e.contains("transient"), "{e}");
    let e = d.fails(&["create", &xml]);
    assert!(e.contains("already exists"), "{e}");
    d.ok(&["destroy", "tmp"]);
    assert_eq!(d.ok(&["list", "--all", "--name"]).trim(), "");
    d.fails(&["dominfo", "tmp"]);
}

#[test]
fn restart_safety_and_autostart() {
    if !kvm_or_skip("restart_safety_and_autostart") {
        return;
    }
    let mut d = Daemon::start("restart");
    for name in ["a", "b", "auto"] {
        let xml = d.guest_xml(name, "vtg.action=halt", "");
        d.ok(&["define", &xml]);
    }
    d.ok(&["start", "a"]);
    d.ok(&["start", "b"]);
    d.ok(&["autostart", "auto"]);
    assert!(d
        .ok(&["dominfo", "auto"])
        .contains("Autostart:      enable"));
    let before = d.ok(&["list"]);
    let pids = d.vmm_pids();
    assert_eq!(pids.len(), 2);

    // The daemon dies; its VMs keep running.
    d.kill9();
    for pid in &pids {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    d.spawn();
    // Still listed running (same ids), and controllable.
    let after = d.ok(&["list"]);
    for line in before.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        assert!(
            after.contains(line),
            "'{line}' missing after restart:\n{after}"
        );
    }
    // The autostart domain came up with the daemon.
    d.wait_state("auto", "running");
    d.ok(&["destroy", "a"]);
    assert_eq!(d.state("a"), "shut off (destroyed)");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists() || d.vmm_pids().len() == 2
    );

    // A VMM that ends while the daemon is down is found ended, with a reason.
    d.kill9();
    let b_pid = d.vmm_pids().into_iter().find(|p| pids.contains(p)).unwrap();
    // SAFETY: kill has no memory effects; the pid is a VMM this test started.
    unsafe { libc::kill(b_pid, libc::SIGKILL) };
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{b_pid}/exe")).exists()
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    d.spawn();
    assert!(d.state("b").starts_with("crashed"), "{}", d.state("b"));

    // A guest that powers off while the daemon is down: its exit file says so.
    let pb = d.guest_xml("pb", "vtg.action=wait-powerbutton", "");
    d.ok(&["define", &pb]);
    d.ok(&["start", "pb"]);
    d.wait_console("pb", "vtg: waiting for the power button");
    d.kill9();
    let api = d.path("run/vireo/vm/pb/api.sock");
    let s = std::os::unix::net::UnixStream::connect(&api).unwrap();
    use std::io::{Read, Write};
    (&s).write_all(b"{\"execute\":\"system_powerdown\",\"id\":1}\n")
        .unwrap();
    let mut rest = String::new();
    let _ = (&s).read_to_string(&mut rest); // until the VMM exits
    d.spawn();
    assert_eq!(d.wait_state("pb", "shut off"), "shut off (shutdown)");
    d.ok(&["autostart", "--disable", "auto"]);
    d.ok(&["destroy", "auto"]);
    d.kill9();
    d.spawn();
    assert_eq!(d.ok(&["list", "--name"]).trim(), "", "autostart disabled");
}

#[test]
fn events_are_delivered() {
    if !kvm_or_skip("events_are_delivered") {
        return;
    }
    let d = Daemon::start("events");
    let mut listener = Command::new(common::vireo_bin())
        .args(["-c", &d.uri, "event", "--loop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = listener.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Subscribed once it answers: wait for the first event of a throwaway domain.
    let xml = d.guest_xml("ev", "vtg.action=halt", "");
    let mut lines = Vec::new();
    let deadline = Instant::now() + common::TIMEOUT;
    let mut defined = false;
    while !defined {
        d.ok(&["define", &xml]);
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
            defined = true;
        }
        assert!(Instant::now() < deadline);
    }
    d.ok(&["start", "ev"]);
    d.ok(&["destroy", "ev"]);
    d.ok(&["undefine", "ev"]);
    while !lines.iter().any(|l| l.contains("Undefined")) {
        let l = rx.recv_timeout(common::TIMEOUT).expect("events stopped");
        lines.push(l);
    }
    let _ = listener.kill();
    let _ = listener.wait();
    let want = [
        "event 'lifecycle' for domain 'ev': Started Booted",
        "event 'lifecycle' for domain 'ev': Stopped Destroyed",
        "event 'lifecycle' for domain 'ev': Undefined Removed",
    ];
    for w in want {
        assert!(lines.iter().any(|l| l == w), "missing '{w}' in {lines:#?}");
    }
    let order: Vec<usize> = want
        .iter()
        .map(|w| lines.iter().position(|l| l == w).unwrap())
        .collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "{lines:#?}");
}

#[test]
fn twenty_clients_in_parallel() {
    if !kvm_or_skip("twenty_clients_in_parallel") {
        return;
    }
    let d = Daemon::start("parallel");
    let shared = d.guest_xml("shared", "vtg.action=halt", "");
    d.ok(&["define", &shared]);
    d.ok(&["start", "shared"]);
    let d = &d;
    std::thread::scope(|s| {
        for i in 0..20 {
            s.spawn(move || {
                let name = format!("p{i}");
                let xml = d.guest_xml(&name, "vtg.action=halt", "");
                for _ in 0..3 {
                    d.ok(&["define", &xml]);
                    assert!(d
                        .ok(&["list", "--all", "--name"])
                        .lines()
                        .any(|l| l == name));
                    assert!(d.ok(&["dominfo", "shared"]).contains("running"));
                    assert_eq!(d.state(&name), "shut off (unknown)");
                    d.ok(&["undefine", &name]);
                }
                d.ok(&["define", &xml]);
            });
        }
    });
    let names = d.ok(&["list", "--all", "--name"]);
    assert_eq!(
        names.lines().filter(|l| !l.is_empty()).count(),
        21,
        "{names}"
    );
    d.ok(&["destroy", "shared"]);
}
