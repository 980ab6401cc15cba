//! virtio-net on real KVM with the test guest's driver (guests/test-guest/guest/virtio_net.c)
//! and a TAP in a private network namespace: the guest's frame reaches the host side of
//! the TAP byte for byte, and the host's reply reaches the guest with a proper header.

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{kvm_or_skip, run_vireo, test_guest};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Whether TAP tests can run here (root, /dev/net/tun); skips with a reason otherwise,
/// unless VIREO_REQUIRE_KVM=1.
fn tap_or_skip(test: &str) -> bool {
    let reason = if !std::path::Path::new("/dev/net/tun").exists() {
        "/dev/net/tun does not exist".to_string()
    } else if
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() } != 0 {
        "not root (a TAP in a network namespace needs CAP_NET_ADMIN)".to_string()
    } else {
        return true;
    };
    if std::env::var("VIREO_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: {reason} (VIREO_REQUIRE_KVM=1)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw packet socket on one interface: the host side of the TAP.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = index as i32;
        // SAFETY: bind(2) reads the sockaddr_ll we own, of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
        PacketSocket(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send(2) reads `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame from the guest with our ethertype, or None after `timeout`.
    fn recv_test_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            // SAFETY: as above, for sockaddr_ll.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom(2) writes at most buf.len() bytes and the address we own.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n >= 14 && sa.sll_pkttype != libc::PACKET_OUTGOING && buf[12..14] == ETHERTYPE {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}

#[test]
fn guest_and_host_exchange_frames_over_a_tap() {
    exchange("guest_and_host_exchange_frames_over_a_tap", false, 1);
}

/// queues=2 on a multi-queue TAP: a driver that does not accept MQ uses the first pair.
#[test]
fn a_multiqueue_device_serves_a_single_queue_driver() {
    exchange("a_multiqueue_device_serves_a_single_queue_driver", false, 2);
}

/// A descriptor loop on the transmit queue: the device reports DEVICE_NEEDS_RESET to the
/// driver (through virtio-pci), the VMM keeps running, and after the driver's reset the
/// device works again.
#[test]
fn tx_descriptor_loop_needs_reset_then_the_device_works_again() {
    let run = exchange(
        "tx_descriptor_loop_needs_reset_then_the_device_works_again",
        true,
        1,
    );
    if let Some(run) = run {
        assert_eq!(
            run.guest_field("virtio-net hostile", "needs-reset")
                .as_deref(),
            Some("1"),
            "{}",
            run.describe()
        );
    }
}

/// Boots the guest's virtio-net action against a TAP in a new network namespace and checks
/// the exchange; None when skipped.
fn exchange(test: &str, hostile: bool, queues: u16) -> Option<common::Run> {
    if !kvm_or_skip(test) || !tap_or_skip(test) {
        return None;
    }
    let cmdline = if hostile {
        "vtg.action=virtio-net vtg.quick=1 vtg.virtio-hostile=1"
    } else {
        "vtg.action=virtio-net vtg.quick=1"
    };
    // A thread of its own in a new network namespace; the VMM it spawns inherits it.
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag; it changes only this thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for f in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
        }
        if queues > 1 {
            ip(&["tuntap", "add", "dev", "vt0", "mode", "tap", "multi_queue"]);
        } else {
            ip(&["tuntap", "add", "dev", "vt0", "mode", "tap"]);
        }
        ip(&["link", "set", "dev", "vt0", "up"]);
        let host = PacketSocket::bind("vt0");
        // The host side answers the guest's frame (threads inherit the namespace).
        let responder = std::thread::spawn(move || {
            let got = host.recv_test_frame(Duration::from_secs(100))?;
            let mut reply = GUEST_MAC.to_vec();
            reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
            reply.extend_from_slice(&ETHERTYPE);
            reply.extend_from_slice(b"vtg-net pong from the host");
            host.send(&reply);
            Some(got)
        });
        let net = format!("tap=vt0,mac=52:54:00:12:34:56,queues={queues}");
        let run = run_vireo(
            &[
                "run",
                "--kernel",
                test_guest(),
                "--memory",
                "64M",
                "--cmdline",
                cmdline,
                "--net",
                &net,
            ],
            Duration::from_secs(120),
        );
        Ok((run, responder.join().unwrap()))
    });
    let (run, from_guest) = match handle.join().unwrap() {
        Ok(v) => v,
        Err(e) => {
            assert!(
                std::env::var("VIREO_REQUIRE_KVM").as_deref() != Ok("1"),
                "{test}: cannot create a network namespace: {e}"
            );
            eprintln!("SKIP {test}: cannot create a network namespace: {e}");
            return None;
        }
    };
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(
        run.guest_field("virtio-net mac=", "mac").as_deref(),
        Some("52:54:00:12:34:56"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.guest_field("virtio-net mac=", "status").as_deref(),
        Some("1"),
        "link up"
    );
    // Guest → host: exactly the frame the guest built.
    let f = from_guest.unwrap_or_else(|| panic!("no frame from the guest\n{}", run.describe()));
    let mut want = vec![0xff; 6];
    want.extend_from_slice(&GUEST_MAC);
    want.extend_from_slice(&ETHERTYPE);
    want.extend_from_slice(b"vtg-net ping");
    assert_eq!(f, want);
    // Host → guest: the reply, with a header saying one buffer and no offloads.
    assert!(
        run.guest_lines().contains(&"virtio-net PASS"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.guest_field("virtio-net got", "hdr").as_deref(),
        Some("000000000000000000000100")
    );
    let line = run
        .guest_lines()
        .into_iter()
        .find(|l| l.starts_with("virtio-net got"))
        .unwrap()
        .to_string();
    assert!(
        line.ends_with("payload=vtg-net pong from the host"),
        "{line}"
    );
    Some(run)
}
