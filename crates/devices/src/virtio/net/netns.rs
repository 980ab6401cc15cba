//! Test helpers: run code in a fresh network namespace, where TAPs, addresses and bridges
//! can be made without touching the host's networking.

use std::io;
use std::os::fd::AsRawFd;

use super::tap::Tap;

/// Runs `f` on a thread of its own in a new network namespace (`unshare(CLONE_NEWNET)`
/// affects only that thread; commands it spawns inherit it). Returns `None`, after printing
/// why, when namespaces or TUN are unavailable — unless `VIREO_REQUIRE_KVM=1`, which makes
/// that a failure, as for the KVM tests.
pub fn run<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let required = std::env::var("VIREO_REQUIRE_KVM").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "{what}: {why} (VIREO_REQUIRE_KVM=1)");
        eprintln!("skipping {what}: {why}");
        None
    };
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip("/dev/net/tun does not exist".into());
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag; it changes only this thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match handle.join() {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => skip(format!(
            "cannot create a network namespace (needs CAP_SYS_ADMIN and CAP_NET_ADMIN): {e}"
        )),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip ARGS` (iproute2) and returns its output; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An Ethernet ARP request (42 bytes): who has `target`? tell `sender`.
pub fn arp_request(mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Reads frames from `tap` until one satisfies `want` (others — IPv6 router solicitations
/// and the like — are skipped). Gives up, panicking, after 10 s without one.
pub fn read_frame(tap: &Tap, buf: &mut [u8], want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tap.read(buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the TAP: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no matching frame on {}",
            tap.name()
        );
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, 100) };
    }
}

/// Removes capabilities from this thread's effective set (the raw capset(2) system call
/// changes only the calling thread, unlike libc's set*id wrappers).
pub fn drop_effective_caps(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) fills the header and two data structs we own.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", io::Error::last_os_error());
    for &cap in caps {
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    }
    // SAFETY: capset(2) reads the header and two data structs we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", io::Error::last_os_error());
}

/// Capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// Disables IPv6 for interfaces created from now on in this thread's namespace, so the
/// kernel sends no router solicitations or MLD reports that would land in test queues.
pub fn quiet_ipv6() {
    for f in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6");
        // Absent without IPv6 support, which is just as quiet.
        let _ = std::fs::write(path, "1");
    }
}

/// The MAC address of an interface (from `ip -o link show`).
pub fn link_mac(name: &str) -> [u8; 6] {
    let out = ip(&["-o", "link", "show", "dev", name]);
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no link/ether in: {out}"));
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// A raw packet socket on one interface: what the host side of a TAP sees and sends.
pub struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        use std::os::fd::FromRawFd;
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
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let index = super::tap::ifindex(ifname)
            .unwrap()
            .expect("interface exists");
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = index;
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

    /// Sends one Ethernet frame out of the interface (into the TAP, towards the guest).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send(2) reads `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send: {}",
            io::Error::last_os_error()
        );
    }

    /// Waits for a frame arriving from the guest (not one the host sent) that satisfies
    /// `want`; panics after 10 s.
    pub fn recv(&self, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = vec![0u8; 70_000];
        loop {
            assert!(std::time::Instant::now() < deadline, "no matching frame");
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
            if n < 0 {
                continue;
            }
            let frame = &buf[..n as usize];
            if sa.sll_pkttype != libc::PACKET_OUTGOING && want(frame) {
                return frame.to_vec();
            }
        }
    }
}
