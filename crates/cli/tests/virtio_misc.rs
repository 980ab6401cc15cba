//! virtio-console, virtio-balloon and virtio-vsock on real KVM through virtio-pci, driven
//! by the test guest's drivers (guests/test-guest/guest/virtio_misc.c): what the guest
//! prints, what the host side sees (bytes on a unix socket) and the guest's verdicts.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::{kvm_or_skip, run_vireo, test_guest, Run, TempDir};

const TIMEOUT: Duration = Duration::from_secs(120);

fn boot(args: &[&str], cmdline: &str) -> Run {
    let mut full = vec![
        "run",
        "--kernel",
        test_guest(),
        "--memory",
        "64M",
        "--cmdline",
        cmdline,
    ];
    full.extend_from_slice(args);
    run_vireo(&full, TIMEOUT)
}

fn assert_line(r: &Run, line: &str) {
    assert!(
        r.guest_lines().contains(&line),
        "no line {line:?}\n{}",
        r.describe()
    );
}

#[test]
fn console_output_goes_through_hvc0() {
    if !kvm_or_skip("console_output_goes_through_hvc0") {
        return;
    }
    let r = boot(
        &["--console", "virtio"],
        "vtg.action=virtio-console vtg.quick=1",
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    // Written by the guest into the transmit queue, not the UART: it reaches the same
    // console output.
    assert_line(&r, "hvc0 says hello");
    assert_line(&r, "virtio-console PASS");
    // Without --console virtio there is no such device.
    let r = boot(&[], "vtg.action=virtio-console vtg.quick=1");
    assert_line(&r, "virtio-console FAIL no device on bus 0");
}

#[test]
fn balloon_inflation_gives_guest_pages_back() {
    if !kvm_or_skip("balloon_inflation_gives_guest_pages_back") {
        return;
    }
    let r = boot(
        &["--balloon", "deflate-on-oom=on"],
        "vtg.action=virtio-balloon vtg.quick=1",
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    // The page the guest filled reads back as zeroes once inflated (MADV_DONTNEED), and
    // is usable again after deflating.
    assert_line(&r, "virtio-balloon target=0 inflated zeroed=1 reusable=1");
    assert_line(&r, "virtio-balloon PASS");
    // An initial target: 64 MiB of RAM, 48 MiB for the guest → 4096 pages in num_pages.
    let r = boot(
        &["--balloon", "target=48M"],
        "vtg.action=virtio-balloon vtg.quick=1",
    );
    assert_line(
        &r,
        "virtio-balloon target=4096 inflated zeroed=1 reusable=1",
    );
    let r = boot(&[], "vtg.action=virtio-balloon vtg.quick=1");
    assert_line(&r, "virtio-balloon FAIL no device on bus 0");
}

#[test]
fn vsock_guest_connects_to_a_host_listener() {
    if !kvm_or_skip("vsock_guest_connects_to_a_host_listener") {
        return;
    }
    let dir = TempDir::new("vsock");
    let socket = dir.path("v.sock");
    // Guest connections to host port 1234 go to v.sock_1234.
    let listener = UnixListener::bind(dir.path("v.sock_1234")).unwrap();
    let host = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = vec![0u8; 19];
        c.read_exact(&mut got).unwrap();
        c.write_all(b"pong from the host").unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        (got, rest)
    });
    let vsock = format!("cid=42,socket={}", socket.display());
    let r = boot(
        &["--vsock", &vsock],
        "vtg.action=virtio-vsock vtg.quick=1 vtg.vsock-port=1234",
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    let (got, rest) = host.join().unwrap();
    assert_eq!(got, b"ping from the guest");
    assert!(rest.is_empty(), "the guest's SHUTDOWN is an EOF: {rest:?}");
    assert_line(&r, "virtio-vsock cid=42");
    assert_line(&r, "virtio-vsock got=pong from the host");
    assert_line(&r, "virtio-vsock PASS");
    assert!(!socket.exists(), "the VMM removes its socket when it exits");
}

#[test]
fn vsock_host_client_reaches_a_guest_listener() {
    if !kvm_or_skip("vsock_host_client_reaches_a_guest_listener") {
        return;
    }
    let dir = TempDir::new("vsock-listen");
    let socket = dir.path("v.sock");
    let path = socket.clone();
    // The host client: CONNECT to guest port 5000 through the VMM's socket (it appears
    // when the VMM starts; the request waits in its backlog until the guest's driver is
    // up), then a line each way.
    let client = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut c = loop {
            match UnixStream::connect(&path) {
                Ok(c) => break c,
                Err(_) if start.elapsed() < TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no vsock socket: {e}"),
            }
        };
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(b"CONNECT 5000\n").unwrap();
        let mut ok = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            c.read_exact(&mut b).unwrap();
            ok.push(b[0]);
        }
        c.write_all(b"hello guest").unwrap();
        let mut echo = vec![0u8; 17];
        c.read_exact(&mut echo).unwrap();
        (String::from_utf8(ok).unwrap(), echo)
    });
    let vsock = format!("cid=7,socket={}", socket.display());
    let r = boot(
        &["--vsock", &vsock],
        "vtg.action=virtio-vsock vtg.quick=1 vtg.vsock-listen=5000",
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    let (ok, echo) = client.join().unwrap();
    let hostport: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("bad OK line {ok:?}"));
    assert_eq!(
        r.guest_field("virtio-vsock accepted", "from").as_deref(),
        Some(hostport.to_string().as_str()),
        "the guest sees the connection from the host port the client was told"
    );
    assert_eq!(echo, b"echo: hello guest");
    assert_line(&r, "virtio-vsock got=hello guest");
    assert_line(&r, "virtio-vsock PASS");
}

#[test]
fn vsock_connection_to_a_port_nobody_listens_on_is_refused() {
    if !kvm_or_skip("vsock_connection_to_a_port_nobody_listens_on_is_refused") {
        return;
    }
    let dir = TempDir::new("vsock-refused");
    let vsock = format!("cid=3,socket={}", dir.path("v.sock").display());
    let r = boot(
        &["--vsock", &vsock],
        "vtg.action=virtio-vsock vtg.quick=1 vtg.vsock-port=9",
    );
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    // op 3 is RST.
    assert_line(&r, "virtio-vsock FAIL no RESPONSE (op 3)");
}

#[test]
fn bad_vsock_and_balloon_flags_are_named() {
    let dir = TempDir::new("vsock-bad");
    let not_a_socket = dir.path("file");
    std::fs::write(&not_a_socket, b"x").unwrap();
    for (args, want) in [
        (
            vec!["--vsock".to_string(), "cid=2,socket=/tmp/x".to_string()],
            "--vsock: cid=2 is out of range",
        ),
        (
            vec![
                "--vsock".to_string(),
                format!("cid=3,socket={}", not_a_socket.display()),
            ],
            "is not a socket",
        ),
        (
            vec!["--balloon=deflate-on-oom=maybe".to_string()],
            "--balloon: deflate-on-oom=maybe",
        ),
        (
            vec!["--balloon=target=1G".to_string()],
            "at most the VM's memory",
        ),
    ] {
        let mut full = vec!["run", "--kernel", test_guest()];
        full.extend(args.iter().map(String::as_str));
        let r = run_vireo(&full, TIMEOUT);
        assert_ne!(r.code(), Some(0), "{}", r.describe());
        assert!(r.stderr.contains(want), "{args:?}: {}", r.describe());
        assert!(!r.stderr.contains("panicked"), "{}", r.describe());
    }
    assert_eq!(std::fs::read(&not_a_socket).unwrap(), b"x", "nothing lost");
}
