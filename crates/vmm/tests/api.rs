//! The control API on real KVM with the test guest: what each command does must be seen
//! from the guest (its console, its progress) and from the process (exit status, exit file).

mod common;

use std::time::Duration;

use common::{kvm_or_skip, test_guest, vcpu0_counters, wait_for, ApiClient, ConsoleClient, Vmm};
use serde_json::{json, Value};

/// Arguments for a 1-vCPU test guest with `cmdline` extra options.
fn guest_args(cmdline: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        test_guest().into(),
        "--memory".into(),
        "64M".into(),
        "--cmdline".into(),
        format!("console=ttyS0 vtg.quick=1 {cmdline}"),
    ]
}

fn spawn(name: &str, extra: &[&str], cmdline: &str) -> Vmm {
    let mut args = guest_args(cmdline);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Vmm::spawn(name, &args)
}

fn names(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event"].as_str()).collect()
}

#[test]
fn pause_stops_the_guest_resume_continues_powerdown_ends_it() {
    if !kvm_or_skip("pause_stops_the_guest_resume_continues_powerdown_ends_it") {
        return;
    }
    let vmm = spawn(
        "pause",
        &[
            "--cpus",
            "2",
            "--console",
            "file:/dev/null",
            "--console-log",
            "/dev/null",
            "--start-paused",
        ],
        "vtg.action=wait-powerbutton",
    );
    let mut a = vmm.api();
    // A second client that only listens: every event must reach it too.
    let mut b = vmm.api();

    let st = a.execute("query-status");
    assert_eq!(st["status"], "paused");
    assert_eq!(st["boots"], 1);
    assert_eq!(st["pid"], vmm.pid());
    a.execute("resume");
    a.event("RESUME");
    assert_eq!(a.execute("query-status")["status"], "running");
    a.event("BOOT_COMPLETE");

    // The guest polls the power button (an MMIO exit each time) while it waits: wait
    // until it does.
    wait_for("the guest to poll the power button", || {
        vcpu0_counters(&a.execute("query-stats")).1 > 5
    });

    assert_eq!(a.execute("pause"), json!({}));
    let (stop, _) = a.event("STOP");
    assert_eq!(stop["data"], json!({}));
    assert!(stop["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(stop["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    assert_eq!(a.execute("query-status")["status"], "paused");
    let paused = a.execute("query-stats");
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["vcpus"][0]["state"], "paused");
    // While paused the guest makes no progress at all: not one exit, over a span in
    // which a running guest makes dozens.
    std::thread::sleep(Duration::from_millis(300));
    let later = a.execute("query-stats");
    assert_eq!(
        vcpu0_counters(&later),
        vcpu0_counters(&paused),
        "a paused guest ran:\n{paused}\n{later}"
    );
    // Paused vCPUs answer on their own threads: both (the second one was never started
    // by the guest and waits for INIT/SIPI) have a stable instruction pointer, the boot
    // vCPU's inside the guest image (loaded at 1 MiB, ~132 KiB).
    let cpus = a.execute("query-cpus-fast");
    assert_eq!(cpus, a.execute("query-cpus-fast"), "paused vCPUs moved");
    let cpus = cpus.as_array().unwrap().clone();
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    for (i, c) in cpus.iter().enumerate() {
        assert_eq!(c["cpu-index"], i);
        assert_eq!(c["state"], "paused");
        let tid = c["thread-id"].as_u64().unwrap();
        assert!(tid > 0 && tid != u64::from(vmm.pid()), "{c}");
        assert!(c["rip"].as_str().unwrap().starts_with("0x"), "{c}");
    }
    assert_ne!(cpus[0]["thread-id"], cpus[1]["thread-id"]);
    let rip = u64::from_str_radix(
        cpus[0]["rip"].as_str().unwrap().trim_start_matches("0x"),
        16,
    );
    assert!((0x10_0000..0x20_0000).contains(&rip.unwrap()), "{cpus:?}");
    assert_eq!(later["vcpus"][1]["state"], "paused");
    // Pausing twice is not an error and sends no second STOP.
    assert_eq!(a.execute("pause"), json!({}));

    assert_eq!(a.execute("resume"), json!({}));
    let (_, before) = a.event("RESUME");
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(a.execute("query-status")["status"], "running");
    // A vCPU thread reports itself running once it has woken up, just after the reply.
    wait_for("vCPU 0 to report running", || {
        a.execute("query-cpus-fast")[0]["state"] == "running"
    });
    let cpus = a.execute("query-cpus-fast");
    assert!(
        cpus[0].get("rip").is_none(),
        "registers only while paused: {cpus}"
    );
    let (_, frozen) = vcpu0_counters(&paused);
    wait_for("the guest to run again", || {
        vcpu0_counters(&a.execute("query-stats")).1 > frozen
    });

    assert_eq!(a.execute("system_powerdown"), json!({}));
    a.event("POWERDOWN");
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "poweroff");
    assert_eq!(shutdown["data"]["status"], 0);
    assert_eq!(a.until_closed(), Vec::<Value>::new());
    let seen = b.until_closed();
    assert_eq!(
        names(&seen),
        [
            "RESUME",
            "BOOT_COMPLETE",
            "STOP",
            "RESUME",
            "POWERDOWN",
            "SHUTDOWN"
        ],
        "{seen:?}"
    );

    let api_path = vmm.api_path();
    let exit = vmm.exit_file();
    let dir = vmm.dir.0.clone();
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    assert_eq!(exit["status"], 0);
    assert_eq!(exit["reason"], "poweroff");
    assert!(!api_path.exists(), "the API socket is removed at exit");
    drop(dir);
}

#[test]
fn powerdown_reaches_the_guest_and_the_console_log() {
    if !kvm_or_skip("powerdown_reaches_the_guest_and_the_console_log") {
        return;
    }
    let dir = common::TempDir::new("pwrlog");
    let log = dir.path("console.log");
    let out = dir.path("console.out");
    let vmm = spawn(
        "pwr",
        &[
            "--console",
            &format!("file:{}", out.display()),
            "--console-log",
            log.to_str().unwrap(),
        ],
        "vtg.action=wait-powerbutton",
    );
    let mut a = vmm.api();
    wait_for("the guest to wait for the power button", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("vtg: waiting for the power button")
    });
    a.execute("system_powerdown");
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.starts_with('@'), "{logged}");
    let waiting = logged.find("vtg: waiting for the power button").unwrap();
    let pressed = logged.find("vtg: power button pressed").expect(&logged);
    assert!(waiting < pressed);
    // The console file and the log got the same bytes.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), logged);
}

#[test]
fn system_reset_reboots_the_guest_and_quit_ends_it() {
    if !kvm_or_skip("system_reset_reboots_the_guest_and_quit_ends_it") {
        return;
    }
    let dir = common::TempDir::new("resetcfg");
    // This VM comes from a --config file, as the daemon starts VMMs.
    let config = dir.path("vm.json");
    let cmdline = "console=ttyS0 vtg.quick=1 vtg.action=halt";
    let console_path = dir.path("con.sock");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "kernel": test_guest(),
            "memory": 64 << 20,
            "cmdline": cmdline,
            "console": {"file": "/dev/null"},
        }))
        .unwrap(),
    )
    .unwrap();
    let console_arg = format!("socket:{}", console_path.display());
    let vmm = Vmm::spawn(
        "reset",
        &[
            "--config",
            config.to_str().unwrap(),
            "--console",
            &console_arg,
            "--start-paused",
        ],
    );
    let mut a = vmm.api();
    assert_eq!(a.execute("query-status")["status"], "paused");
    let cfg = a.execute("query-config");
    assert_eq!(cfg["cmdline"], cmdline);
    assert_eq!(cfg["memory"], 64 << 20);
    assert_eq!(cfg["cpus"], 1);
    assert_eq!(cfg["console"], json!({"socket": console_path}));
    // Started paused: not one guest instruction yet, so the console client sees the very
    // first byte.
    let mut console = ConsoleClient::connect(&console_path);
    let stats = a.execute("query-stats");
    assert_eq!(vcpu0_counters(&stats), (0, 0), "{stats}");
    a.execute("resume");
    a.event("RESUME");
    // The whole line: a reset while the guest is still printing would cut it.
    console.read_until("vtg: action halt\r\n");
    let (bc, _) = a.event("BOOT_COMPLETE");
    assert_eq!(bc["data"], json!({"boot": 1}));

    // A reset while paused rebuilds the VM and keeps it paused: the new VM has not run.
    a.execute("pause");
    a.event("STOP");
    a.execute("system_reset");
    let (reset, before) = a.event("RESET");
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(reset["data"], json!({"guest": false}));
    let st = a.execute("query-status");
    assert_eq!(
        (st["status"].as_str(), st["boots"].as_u64()),
        (Some("paused"), Some(2))
    );
    let stats = a.execute("query-stats");
    assert_eq!(stats["vcpus"][0]["state"], "paused");
    assert_eq!(vcpu0_counters(&stats), (0, 0), "{stats}");
    assert!(!console.text().contains("vtg: boot 1"));
    a.execute("resume");
    console.read_until("vtg: boot 1");
    console.read_until_n("vtg: action halt\r\n", 2);
    let (bc, _) = a.event("BOOT_COMPLETE");
    assert_eq!(bc["data"], json!({"boot": 2}));
    let st = a.execute("query-status");
    assert_eq!(
        (st["status"].as_str(), st["boots"].as_u64()),
        (Some("running"), Some(2))
    );
    let text = console.text();
    assert!(text.starts_with('@'), "{text}");
    assert_eq!(text.matches("vtg: result PASS").count(), 2, "{text}");
    assert!(text.contains("vtg: boot 0"), "{text}");

    // quit works on a paused VM too (the parked vCPUs are stopped).
    a.execute("pause");
    assert_eq!(a.execute("quit"), json!({}));
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "quit");
    console.read_to_end();
    let ended_exit = {
        let exit = vmm.exit_file();
        let ended = vmm.wait();
        assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
        exit
    };
    assert_eq!(
        ended_exit,
        json!({"status": 0, "reason": "quit", "detail": "quit command"})
    );
    assert!(
        !console_path.exists(),
        "the console socket is removed at exit"
    );
}

#[test]
fn console_socket_input_reaches_the_guest() {
    if !kvm_or_skip("console_socket_input_reaches_the_guest") {
        return;
    }
    let dir = common::TempDir::new("echo");
    let sock = dir.path("con.sock");
    let log = dir.path("con.log");
    let vmm = spawn(
        "echo",
        &[
            "--console",
            &format!("socket:{}", sock.display()),
            "--console-log",
            log.to_str().unwrap(),
        ],
        "vtg.action=echo",
    );
    let mut c1 = ConsoleClient::connect(&sock);
    let mut c2 = ConsoleClient::connect(&sock);
    c1.read_until("vtg: echo ready");
    c1.type_text("hello from the console socket\r");
    c1.read_until("vtg: echo hello from the console socket");
    // Every client sees the output; the log has all of it.
    c2.read_until("vtg: echo hello from the console socket");
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(0), "{}", ended.stderr);
    c1.read_to_end();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.starts_with('@'), "{logged}");
    assert!(logged.contains("vtg: echo hello from the console socket\r\n"));
    // c1 got every byte from the moment it connected.
    assert!(logged.ends_with(&c1.text()), "{logged}\n---\n{}", c1.text());
}

#[test]
fn bad_requests_get_error_replies_and_the_vm_keeps_running() {
    if !kvm_or_skip("bad_requests_get_error_replies_and_the_vm_keeps_running") {
        return;
    }
    let mut vmm = spawn(
        "badreq",
        &["--console", "file:/dev/null"],
        "vtg.action=halt",
    );
    let mut a = vmm.api();
    fn check(a: &mut ApiClient, raw: &[u8], class: &str, desc: &str) -> Value {
        a.send_raw(raw);
        let r = a.reply();
        assert_eq!(r["error"]["class"], class, "{r}");
        let d = r["error"]["desc"].as_str().unwrap();
        assert!(d.contains(desc), "{d}");
        r
    }
    check(
        &mut a,
        b"{\"execute\": \n",
        "GenericError",
        "malformed JSON",
    );
    check(&mut a, b"[1]\n", "GenericError", "must be a JSON object");
    let r = check(
        &mut a,
        b"{\"execute\":\"format-disk\",\"id\":42}\n",
        "CommandNotFound",
        "format-disk",
    );
    assert_eq!(r["id"], 42);
    check(
        &mut a,
        b"{\"execute\":\"pause\",\"arguments\":{\"now\":1}}\n",
        "GenericError",
        "no argument 'now'",
    );
    // A request over the size limit, sent in pieces.
    let mut big = b"{\"execute\":\"query-status\",\"id\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    big.extend_from_slice(b"\"}\n");
    check(&mut a, &big, "GenericError", "longer than 65536 bytes");
    // Blank lines are ignored; CRLF is accepted; the connection still works.
    a.send_raw(b"\n\r\n{\"execute\":\"query-status\",\"id\":1}\r\n");
    let r = a.reply();
    assert_eq!(
        (r["id"].clone(), r["return"]["status"].clone()),
        (json!(1), json!("running"))
    );

    // Clients that vanish — mid-request, or with unread events pending — stop nothing.
    {
        let mut gone = vmm.api();
        gone.send_raw(b"{\"execute\":\"query-st");
    }
    {
        let mut gone = vmm.api();
        gone.send_raw(b"{\"execute\":\"query-stats\"}\n{\"execute\":\"query-stats\"}\n");
    }
    // SIGHUP (what a dying terminal or session sends) is not a stop signal with an API
    // socket: the VM outlives whoever launched it.
    vmm.signal(libc::SIGHUP);
    for _ in 0..3 {
        assert_eq!(a.execute("query-status")["status"], "running");
    }
    assert!(vmm.running());

    // SIGTERM is.
    vmm.signal(libc::SIGTERM);
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "signal");
    assert_eq!(shutdown["data"]["detail"], "SIGTERM");
    let exit = vmm.exit_file();
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(
        exit,
        json!({"status": 128 + libc::SIGTERM, "reason": "signal", "detail": "SIGTERM"})
    );
}

#[test]
fn guest_failure_is_reported_in_the_event_and_the_exit_file() {
    if !kvm_or_skip("guest_failure_is_reported_in_the_event_and_the_exit_file") {
        return;
    }
    let vmm = spawn(
        "triple",
        &["--console", "file:/dev/null", "--start-paused"],
        "vtg.action=triple-fault",
    );
    let mut a = vmm.api();
    a.execute("resume");
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "guest-failure");
    assert_eq!(shutdown["data"]["status"], 1);
    let exit = vmm.exit_file();
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(1));
    assert_eq!(exit["reason"], "guest-failure");
    let detail = exit["detail"].as_str().unwrap();
    assert!(detail.contains("triple fault"), "{detail}");
    assert!(detail.contains("RIP="), "register dump: {detail}");
}

#[test]
fn guest_panic_is_an_event_and_the_exit_reason() {
    if !kvm_or_skip("guest_panic_is_an_event_and_the_exit_reason") {
        return;
    }
    let vmm = spawn(
        "panic",
        &["--console", "file:/dev/null", "--start-paused"],
        "vtg.action=pvpanic",
    );
    let mut a = vmm.api();
    a.execute("resume");
    let (_, before) = a.event("GUEST_PANICKED");
    assert!(
        !names(&before).contains(&"RESET"),
        "the reset after the panic must not reboot: {before:?}"
    );
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "guest-panicked");
    let exit = vmm.exit_file();
    assert_eq!(vmm.wait().status.code(), Some(1));
    assert_eq!(exit["reason"], "guest-panicked");
}

#[test]
fn survives_its_launcher_going_away() {
    if !kvm_or_skip("survives_its_launcher_going_away") {
        return;
    }
    // What the VMM sees when the daemon that started it dies: its stdout/stderr pipes
    // have no reader (every log line and, with a stdio console, every byte of guest output
    // is an EPIPE) and the session may get SIGHUP. It keeps running and stays
    // controllable.
    let vmm = Vmm::spawn_orphaned(
        "orphan",
        &[
            "--kernel",
            test_guest(),
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 vtg.quick=1 vtg.action=wait-powerbutton",
            "--console",
            "stdio",
        ],
    );
    let mut a = vmm.api();
    vmm.signal(libc::SIGHUP);
    wait_for("the guest to reach its power-button wait", || {
        vcpu0_counters(&a.execute("query-stats")).1 > 0
    });
    a.execute("pause");
    a.execute("resume");
    a.execute("system_powerdown");
    let (shutdown, _) = a.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "poweroff");
    let exit = vmm.exit_file();
    let ended = vmm.wait();
    assert_eq!(ended.status.code(), Some(0));
    assert_eq!(exit["reason"], "poweroff");
}
