//! The guest's Ethernet address: parsed from `mac=…`, or generated in the `52:54:00` range
//! that libvirt and QEMU use for KVM guests.

use std::fmt;

/// An Ethernet MAC address (unicast).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random `52:54:00:xx:xx:xx` (host getrandom).
    pub fn random() -> std::io::Result<MacAddr> {
        let mut r = [0u8; 3];
        let mut got = 0;
        while got < r.len() {
            // SAFETY: getrandom(2) writes at most the given length into our buffer.
            let n = unsafe { libc::getrandom(r[got..].as_mut_ptr().cast(), r.len() - got, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            got += n as usize;
        }
        Ok(MacAddr([0x52, 0x54, 0x00, r[0], r[1], r[2]]))
    }

    /// A `52:54:00:xx:xx:xx` derived from `seed` (say, the TAP's name), so the same VM
    /// configuration gets the same address on every start without storing it: FNV-1a,
    /// a fixed function, so it does not change with the Rust version.
    pub fn from_seed(seed: &str) -> MacAddr {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        MacAddr([0x52, 0x54, 0x00, b[0] ^ b[3], b[1] ^ b[4], b[2] ^ b[5]])
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let shown: String = s
            .chars()
            .take(40)
            .collect::<String>()
            .escape_default()
            .to_string();
        let bad = || {
            format!(
                "invalid MAC address '{shown}': expected six hex octets such as 52:54:00:12:34:56"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 != 0 {
            return Err(format!(
                "invalid MAC address '{shown}': it is a multicast address (the first octet is odd)"
            ));
        }
        if b == [0; 6] {
            return Err(format!("invalid MAC address '{shown}': all zeros"));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:xg",
            "525:4:00:ab:cd:0f",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.contains("expected six hex octets"), "{bad}: {e}");
        }
        let e = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(e.contains("multicast"), "{e}");
        let e = "00:00:00:00:00:00".parse::<MacAddr>().unwrap_err();
        assert!(e.contains("all zeros"), "{e}");
    }

    #[test]
    fn generated_addresses_are_kvm_range_unicast() {
        let r = MacAddr::random().unwrap();
        assert_eq!(&r.0[..3], &[0x52, 0x54, 0x00]);
        let a = MacAddr::from_seed("tap0");
        assert_eq!(a, MacAddr::from_seed("tap0"), "stable for the same seed");
        assert_ne!(a, MacAddr::from_seed("tap1"));
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }
}
