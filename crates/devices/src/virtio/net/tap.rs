//! The host end of a virtio-net device: a Linux TAP interface opened through
//! `/dev/net/tun` with virtio-net headers (`IFF_VNET_HDR`), so checksum and segmentation
//! offloads pass between guest and host kernel untouched.
//!
//! * `tap=auto`: vireo creates `vireo-tapN` (the kernel picks N), brings it up, and the
//!   interface disappears when the VMM exits (it is not persistent: closing the last file
//!   descriptor deletes it, even if the VMM is killed).
//! * `tap=NAME`: attach to an existing TAP, e.g. one made with
//!   `ip tuntap add dev NAME mode tap user USER` (its owner may attach without privileges).
//!
//! The file descriptor is non-blocking; each `read` returns one frame and each `write`
//! sends one, both prefixed with the 12-byte virtio-net header
//! ([`VNET_HDR_LEN`], `struct virtio_net_hdr_mrg_rxbuf`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Size of the virtio-net header on both the TAP and the virtqueues (virtio 1.x always
/// has the `num_buffers` field).
pub const VNET_HDR_LEN: usize = 12;
/// Name template of the TAPs `tap=auto` creates (the kernel replaces `%d`).
pub const AUTO_TEMPLATE: &str = "vireo-tap%d";
/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;

const TUN_PATH: &str = "/dev/net/tun";
/// `SIOCBRADDIF` (linux/sockios.h), absent from the libc crate for Linux.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Which TAP a virtio-net device uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapName {
    /// Create a new `vireo-tapN`, deleted when the VMM exits.
    Auto,
    /// Attach to this existing TAP interface.
    Named(String),
}

impl std::fmt::Display for TapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapName::Auto => f.write_str("auto"),
            TapName::Named(n) => f.write_str(n),
        }
    }
}

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the interface name is empty".into());
    }
    if name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name '{}' is longer than {MAX_IFNAME} bytes",
            name.escape_default()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control() || *c == '%')
    {
        return Err(format!(
            "interface name '{}' contains '{}', which Linux does not allow",
            name.escape_default(),
            c.escape_default()
        ));
    }
    Ok(())
}

/// Why a TAP could not be opened or set up. Messages are one line, name the interface and
/// say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{TUN_PATH} does not exist (this kernel has no TUN/TAP driver loaded: modprobe tun)")]
    NoTunDevice,
    #[error("cannot open {TUN_PATH}: permission denied (run as root, or give the user read/write access to it)")]
    TunPermission,
    #[error("invalid TAP name: {0}")]
    InvalidName(String),
    #[error("TAP '{0}' does not exist (create it with `ip tuntap add dev {0} mode tap user $USER`, or use tap=auto)")]
    NoSuchDevice(String),
    #[error("'{0}' is not a TAP interface (it is another kind of network device, or a TUN)")]
    NotTap(String),
    #[error("'{0}' is not a multi-queue TAP (queues=N needs one made with `ip tuntap add dev {0} mode tap multi_queue`)")]
    NotMultiQueue(String),
    #[error("TAP '{0}' is busy: another process (a running VM?) has it open")]
    Busy(String),
    #[error("not permitted to {action}: needs CAP_NET_ADMIN{hint}")]
    Permission { action: String, hint: String },
    #[error("bridge '{0}' does not exist")]
    NoSuchBridge(String),
    #[error("'{0}' is not a bridge")]
    NotBridge(String),
    #[error("TAP '{name}': {what}: {err}")]
    Io {
        name: String,
        what: &'static str,
        err: io::Error,
    },
}

/// An open TAP interface. Dropping it closes the file descriptor, which deletes an
/// interface vireo created.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

/// A datagram socket for interface ioctls in the calling thread's network namespace.
fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the returned descriptor is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name and a union of integers/pointers); all-zero
    // is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(MAX_IFNAME)) {
        *dst = src as libc::c_char;
    }
    req
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The interface index of `name` in this thread's network namespace, or `None`.
pub fn ifindex(name: &str) -> io::Result<Option<i32>> {
    if check_ifname(name).is_err() {
        return Ok(None);
    }
    let sock = ctl_socket()?;
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFINDEX reads the name and writes an int into the ifreq we own.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel filled the ifindex member of the union.
    Ok(Some(unsafe { req.ifr_ifru.ifru_ifindex }))
}

/// Sets IFF_UP on an interface (SIOCGIFFLAGS then SIOCSIFFLAGS).
fn set_link_up(name: &str) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS writes the flags member of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Opens `/dev/net/tun` and creates or attaches the TAP, with virtio-net headers,
    /// no packet information prefix, no offloads (until [`Tap::set_offload`]) and a
    /// non-blocking descriptor. An interface vireo creates is brought up.
    pub fn open(which: &TapName) -> Result<Tap, TapError> {
        Self::open_queue(which, false)
    }

    /// Opens `queues` queues of one multi-queue TAP (`IFF_MULTI_QUEUE`), one descriptor
    /// each, all attached; one queue is [`Tap::open`]. A named TAP must have been made
    /// multi-queue (`ip tuntap add … multi_queue`).
    pub fn open_queues(which: &TapName, queues: u16) -> Result<Vec<Tap>, TapError> {
        if queues <= 1 {
            return Ok(vec![Self::open(which)?]);
        }
        let first = Self::open_queue(which, true)?;
        let same = TapName::Named(first.name.clone());
        let mut taps = vec![first];
        for _ in 1..queues {
            taps.push(Self::open_queue(&same, true)?);
        }
        Ok(taps)
    }

    /// Attaches this queue to its TAP, or detaches it (`TUNSETQUEUE`): the kernel spreads
    /// frames only over attached queues, and a detached queue neither reads nor writes.
    pub fn set_queue_attached(&self, attached: bool) -> io::Result<()> {
        let mut req = ifreq("");
        let flag = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.ifr_ifru.ifru_flags = flag as libc::c_short;
        // SAFETY: TUNSETQUEUE reads the flags of the ifreq we own.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn open_queue(which: &TapName, multi: bool) -> Result<Tap, TapError> {
        let (request, action) = match which {
            TapName::Auto => (AUTO_TEMPLATE.to_string(), "create a TAP interface"),
            TapName::Named(name) => {
                check_ifname(name).map_err(TapError::InvalidName)?;
                // TUNSETIFF would create a missing interface (given CAP_NET_ADMIN): a
                // named TAP must already exist, so a typo is not silently a new device.
                match ifindex(name) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(TapError::NoSuchDevice(name.clone())),
                    Err(err) => {
                        return Err(TapError::Io {
                            name: name.clone(),
                            what: "looking up the interface",
                            err,
                        })
                    }
                }
                (name.clone(), "attach to a TAP interface")
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    TapError::NoTunDevice
                }
                Some(libc::EACCES) | Some(libc::EPERM) => TapError::TunPermission,
                _ => TapError::Io {
                    name: which.to_string(),
                    what: "opening /dev/net/tun",
                    err: e,
                },
            })?;

        let mut base = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi {
            base |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = ifreq(&request);
        req.ifr_ifru.ifru_flags = base as libc::c_short;
        // SAFETY: TUNSETIFF reads the name and flags of the ifreq we own and writes back
        // the interface's name.
        let mut r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        let mut err = io::Error::last_os_error();
        if r < 0 && err.raw_os_error() == Some(libc::EINVAL) && *which != TapName::Auto && !multi {
            // An existing multi-queue TAP only accepts multi-queue attachments.
            req.ifr_ifru.ifru_flags = (base | libc::IFF_MULTI_QUEUE) as libc::c_short;
            // SAFETY: as above.
            r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            err = io::Error::last_os_error();
        }
        if r < 0 {
            let name = which.to_string();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    action: format!("{action} '{name}'"),
                    hint: match which {
                        TapName::Auto => String::new(),
                        TapName::Named(_) => {
                            " (or a TAP owned by this user: ip tuntap add … user $USER)".into()
                        }
                    },
                },
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EINVAL) if multi => TapError::NotMultiQueue(name),
                Some(libc::EINVAL) => TapError::NotTap(name),
                _ => TapError::Io {
                    name,
                    what: "TUNSETIFF",
                    err,
                },
            });
        }
        let tap = Tap {
            file,
            name: ifreq_name(&req),
            created: *which == TapName::Auto,
        };
        let io_err = |what, err| TapError::Io {
            name: tap.name.clone(),
            what,
            err,
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int we own.
        if unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io_err(
                "setting the vnet header size",
                io::Error::last_os_error(),
            ));
        }
        tap.set_offload(0)
            .map_err(|e| io_err("clearing offloads", e))?;
        if tap.created {
            set_link_up(&tap.name).map_err(|e| io_err("bringing the link up", e))?;
        }
        Ok(tap)
    }

    /// The interface's name (`vireo-tap0`, or the name given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether vireo created this interface (it goes away with the VMM).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Tells the kernel which offloads the guest accepts on receive (`TUN_F_*`): it then
    /// hands over frames with partial checksums or GSO only of those kinds.
    pub fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                tun_flags as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds the interface to a host bridge and brings it up (needs CAP_NET_ADMIN).
    pub fn attach_to_bridge(&self, bridge: &str) -> Result<(), TapError> {
        check_ifname(bridge).map_err(TapError::InvalidName)?;
        let io_err = |what, err| TapError::Io {
            name: self.name.clone(),
            what,
            err,
        };
        let tap_index = ifindex(&self.name)
            .map_err(|e| io_err("looking up the interface", e))?
            .ok_or_else(|| TapError::NoSuchDevice(self.name.clone()))?;
        if ifindex(bridge)
            .map_err(|e| io_err("looking up the bridge", e))?
            .is_none()
        {
            return Err(TapError::NoSuchBridge(bridge.to_string()));
        }
        let sock = ctl_socket().map_err(|e| io_err("opening a socket", e))?;
        let mut req = ifreq(bridge);
        req.ifr_ifru.ifru_ifindex = tap_index;
        // SAFETY: SIOCBRADDIF reads the bridge name and port ifindex of the ifreq we own.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &req) } < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    action: format!("add TAP '{}' to bridge '{bridge}'", self.name),
                    hint: String::new(),
                },
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENODEV) => {
                    TapError::NotBridge(bridge.to_string())
                }
                _ => io_err("adding it to the bridge", err),
            });
        }
        set_link_up(&self.name).map_err(|e| io_err("bringing the link up", e))
    }

    /// Reads one frame (virtio-net header first). `WouldBlock` when none is queued; a
    /// frame longer than `buf` is truncated by the kernel.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Sends one frame (virtio-net header first) to the host.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Sends one frame (virtio-net header first) gathered from `pieces` with one
    /// `writev(2)` (`write(2)` for one piece, the kernel's cheaper path): the kernel copies
    /// straight out of guest memory.
    pub fn write_guest<B: BitmapSlice>(
        &self,
        pieces: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        if let [one] = pieces {
            let guard = one.ptr_guard();
            // SAFETY: the pointer and length are one VolatileSlice of guest memory: vm-memory
            // built it from a mapped region and checked that the whole length lies inside
            // that mapping; the guard (and the slice's borrow of the guest memory, which
            // keeps the mapping alive) outlive the call. write only reads these bytes.
            let n =
                unsafe { libc::write(self.file.as_raw_fd(), guard.as_ptr().cast(), guard.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(n as usize);
        }
        let guards: Vec<_> = pieces.iter().map(|p| p.ptr_guard()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: g.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: each iovec is one VolatileSlice of guest memory: vm-memory built it from a
        // mapped region and checked that the whole length lies inside that mapping, and the
        // guards (and the slices' borrow of the guest memory, which keeps the mapping alive)
        // outlive the call. writev only reads these bytes; the guest changing them meanwhile
        // changes only its own frame.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::netns;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("vireo-tap12345").is_ok());
        assert!(check_ifname("").unwrap_err().contains("empty"));
        assert!(check_ifname("a-very-long-name-0")
            .unwrap_err()
            .contains("longer than 15"));
        assert!(check_ifname("a/b").unwrap_err().contains("'/'"));
        assert!(check_ifname("a b").unwrap_err().contains("' '"));
        assert!(check_ifname("tap%d").unwrap_err().contains("'%'"));
        assert!(check_ifname("..").is_err());
        let e = Tap::open(&TapName::Named("bad/name".into())).unwrap_err();
        assert!(e.to_string().starts_with("invalid TAP name"), "{e}");
    }

    #[test]
    fn auto_tap_is_created_up_and_deleted_on_close() {
        let Some(()) = netns::run("auto TAP", || {
            let tap = Tap::open(&TapName::Auto).unwrap();
            assert_eq!(tap.name(), "vireo-tap0");
            assert!(tap.created());
            let second = Tap::open(&TapName::Auto).unwrap();
            assert_eq!(second.name(), "vireo-tap1");
            let link = netns::ip(&["-o", "link", "show", "dev", "vireo-tap0"]);
            assert!(link.contains(",UP"), "{link}");
            // The vnet header size took effect.
            let mut n: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes an int we own.
            let r = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut n) };
            assert_eq!((r, n), (0, VNET_HDR_LEN as libc::c_int));
            drop(tap);
            // The kernel unregisters a TAP whose last descriptor closed a little later
            // (after an RCU grace period), so wait for it, boundedly.
            let gone = (0..500).any(|_| {
                let gone = ifindex("vireo-tap0").unwrap().is_none();
                if !gone {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                gone
            });
            assert!(
                gone,
                "vireo-tap0 still exists 5 s after its descriptor closed"
            );
            assert!(ifindex("vireo-tap1").unwrap().is_some());
        }) else {
            return;
        };
    }

    #[test]
    fn named_tap_attach_and_errors() {
        let Some(()) = netns::run("named TAP", || {
            let e = Tap::open(&TapName::Named("nosuch0".into())).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("TAP 'nosuch0' does not exist (create it with `ip tuntap add"),
                "{e}"
            );
            // Nothing was created by the failed attempt.
            assert_eq!(ifindex("nosuch0").unwrap(), None);

            netns::ip(&["tuntap", "add", "dev", "vt0", "mode", "tap"]);
            let tap = Tap::open(&TapName::Named("vt0".into())).unwrap();
            assert_eq!(tap.name(), "vt0");
            assert!(!tap.created());
            let e = Tap::open(&TapName::Named("vt0".into())).unwrap_err();
            assert_eq!(
                e.to_string(),
                "TAP 'vt0' is busy: another process (a running VM?) has it open"
            );
            drop(tap);
            // A persistent TAP stays after vireo closes it, and can be attached again. (A
            // process another test thread is spawning holds a copy of every descriptor
            // between its fork and exec, so the TAP can stay busy for a moment: retry,
            // boundedly.)
            assert!(ifindex("vt0").unwrap().is_some());
            let reopened = (0..500).find_map(|_| match Tap::open(&TapName::Named("vt0".into())) {
                Err(TapError::Busy(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                other => Some(other),
            });
            reopened.expect("vt0 still busy after 5 s").unwrap();

            netns::ip(&["tuntap", "add", "dev", "vtun0", "mode", "tun"]);
            let e = Tap::open(&TapName::Named("vtun0".into())).unwrap_err();
            assert!(e.to_string().contains("'vtun0' is not a TAP"), "{e}");
            let e = Tap::open(&TapName::Named("lo".into())).unwrap_err();
            assert!(e.to_string().contains("'lo' is not a TAP"), "{e}");

            netns::ip(&[
                "tuntap",
                "add",
                "dev",
                "vtmq0",
                "mode",
                "tap",
                "multi_queue",
            ]);
            let tap = Tap::open(&TapName::Named("vtmq0".into())).unwrap();
            assert_eq!(tap.name(), "vtmq0");
        }) else {
            return;
        };
    }

    #[test]
    fn missing_privileges_are_named() {
        let Some(()) = netns::run("TAP permissions", || {
            // A TAP with an owner admits that user, or CAP_NET_ADMIN (one without an owner
            // admits anyone who may open /dev/net/tun).
            netns::ip(&[
                "tuntap", "add", "dev", "vt0", "mode", "tap", "user", "12345",
            ]);
            netns::ip(&["tuntap", "add", "dev", "vt1", "mode", "tap"]);
            netns::drop_effective_caps(&[netns::CAP_NET_ADMIN]);
            Tap::open(&TapName::Named("vt1".into())).unwrap();
            let e = Tap::open(&TapName::Auto).unwrap_err();
            assert_eq!(
                e.to_string(),
                "not permitted to create a TAP interface 'auto': needs CAP_NET_ADMIN"
            );
            let e = Tap::open(&TapName::Named("vt0".into())).unwrap_err();
            assert!(
                e.to_string().starts_with(
                    "not permitted to attach to a TAP interface 'vt0': needs CAP_NET_ADMIN \
                     (or a TAP owned by this user"
                ),
                "{e}"
            );
            // Another user, without CAP_DAC_OVERRIDE, may not open the root-only device.
            // SAFETY: setfsuid(2) changes only this thread's file-system uid.
            unsafe { libc::syscall(libc::SYS_setfsuid, 12345) };
            let e = Tap::open(&TapName::Auto).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("cannot open /dev/net/tun: permission denied"),
                "{e}"
            );
        }) else {
            return;
        };
    }

    #[test]
    fn frames_cross_with_vnet_headers_and_offloads() {
        let Some(()) = netns::run("TAP frames", || {
            let tap = Tap::open(&TapName::Auto).unwrap();
            netns::ip(&["addr", "add", "10.99.0.1/24", "dev", tap.name()]);
            let mut buf = vec![0u8; 70_000];
            // The descriptor is non-blocking: reads end in WouldBlock instead of waiting
            // (the host may already have queued a frame or two, e.g. IPv6 link-local
            // traffic once the link is up, so drain a bounded number first).
            let drained = (0..64).find_map(|_| tap.read(&mut buf).err());
            assert_eq!(
                drained.map(|e| e.kind()),
                Some(io::ErrorKind::WouldBlock),
                "the descriptor is non-blocking"
            );
            // Guest → host: an ARP request for the host's address; the host kernel answers
            // with a reply to our MAC.
            let guest_mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
            let mut frame = vec![0u8; VNET_HDR_LEN];
            frame.extend_from_slice(&netns::arp_request(
                guest_mac,
                [10, 99, 0, 2],
                [10, 99, 0, 1],
            ));
            assert_eq!(tap.write(&frame).unwrap(), frame.len());
            let reply = netns::read_frame(&tap, &mut buf, |f| {
                f.len() >= VNET_HDR_LEN + 42
                    && f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0x06]
                    && f[VNET_HDR_LEN + 20..VNET_HDR_LEN + 22] == [0, 2]
            });
            let eth = &reply[VNET_HDR_LEN..];
            assert_eq!(&eth[0..6], &guest_mac, "reply goes to the guest's MAC");
            assert_eq!(&eth[28..32], &[10, 99, 0, 1], "sender is the host address");
            assert_eq!(&reply[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN][..]);

            // With offloads on, a large UDP datagram from the host arrives as one frame
            // with a partial checksum (NEEDS_CSUM) instead of being checksummed by the
            // host; without, it arrives checksummed.
            netns::ip(&[
                "neigh",
                "replace",
                "10.99.0.2",
                "lladdr",
                "52:54:00:12:34:56",
                "dev",
                tap.name(),
            ]);
            tap.set_offload(libc::TUN_F_CSUM).unwrap();
            let sock = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
            sock.send_to(b"hello", "10.99.0.2:9").unwrap();
            let udp = |f: &[u8]| {
                f.len() > VNET_HDR_LEN + 42
                    && f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [8, 0]
                    && f[VNET_HDR_LEN + 23] == 17
            };
            let f = netns::read_frame(&tap, &mut buf, udp);
            assert_eq!(f[0] & 1, 1, "NEEDS_CSUM with TUN_F_CSUM: {:?}", &f[..12]);
            assert_eq!(&f[f.len() - 5..], b"hello");
            tap.set_offload(0).unwrap();
            sock.send_to(b"again", "10.99.0.2:9").unwrap();
            let f = netns::read_frame(&tap, &mut buf, udp);
            assert_eq!(f[0] & 1, 0, "no partial checksum without offloads");
            assert_eq!(&f[f.len() - 5..], b"again");
        }) else {
            return;
        };
    }

    #[test]
    fn bridge_attach() {
        let Some(()) = netns::run("bridge attach", || {
            netns::ip(&["link", "add", "br-test", "type", "bridge"]);
            let tap = Tap::open(&TapName::Auto).unwrap();
            tap.attach_to_bridge("br-test").unwrap();
            let link = netns::ip(&["-o", "link", "show", "dev", tap.name()]);
            assert!(link.contains("master br-test"), "{link}");
            let e = tap.attach_to_bridge("nobr0").unwrap_err();
            assert_eq!(e.to_string(), "bridge 'nobr0' does not exist");
            netns::ip(&["tuntap", "add", "dev", "notbr0", "mode", "tap"]);
            let e = tap.attach_to_bridge("notbr0").unwrap_err();
            assert_eq!(e.to_string(), "'notbr0' is not a bridge");
        }) else {
            return;
        };
    }
}
