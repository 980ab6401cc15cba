//! Identifiers: domain UUIDs and MAC addresses (parsed, validated, generated).

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads random bytes from the kernel. Only fails on a broken system (no /dev/urandom).
fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// A domain UUID. Written in the canonical lowercase `8-4-4-4-12` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// A new random (version 4) UUID.
    pub fn new_v4() -> std::io::Result<Uuid> {
        let mut b = random_bytes::<16>()?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Uuid(b))
    }

    pub fn from_bytes(b: [u8; 16]) -> Uuid {
        Uuid(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::str::FromStr for Uuid {
    type Err = String;

    /// Accepts what libvirt writes and common variants: 32 hex digits, with or without the
    /// usual hyphens. A UUID whose digits are all the same (such as all zeros) is refused,
    /// as libvirt does.
    fn from_str(s: &str) -> Result<Uuid, String> {
        let t = s.trim();
        let digits: Vec<u8> = t.bytes().filter(|&c| c != b'-').collect();
        let bad = || {
            format!(
                "invalid UUID '{t}': expected 32 hex digits such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
            )
        };
        if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        if t.contains('-') {
            let groups: Vec<usize> = t.split('-').map(str::len).collect();
            if groups != [8, 4, 4, 4, 12] {
                return Err(bad());
            }
        }
        if digits.iter().all(|c| c.eq_ignore_ascii_case(&digits[0])) {
            return Err(format!("invalid UUID '{t}': all digits are the same"));
        }
        let mut b = [0u8; 16];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            b[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Uuid(b))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet MAC address. Generated ones use the `52:54:00` prefix, as libvirt does for
/// KVM guests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally-administered address `52:54:00:xx:xx:xx`.
    pub fn generate() -> std::io::Result<MacAddr> {
        let r = random_bytes::<3>()?;
        Ok(MacAddr([0x52, 0x54, 0x00, r[0], r[1], r[2]]))
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let t = s.trim();
        let bad = || {
            format!("invalid MAC address '{t}': expected six hex octets such as 52:54:00:12:34:56")
        };
        let parts: Vec<&str> = t.split(':').collect();
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
                "invalid MAC address '{t}': it is a multicast address (the first octet is odd)"
            ));
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

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse_and_print() {
        let u: Uuid = "4DEA22B3-1D52-D8F3-2516-782E98AB3FA0".parse().unwrap();
        assert_eq!(u.to_string(), "4dea22b3-1d52-d8f3-2516-782e98ab3fa0");
        let v: Uuid = "4dea22b31d52d8f32516782e98ab3fa0".parse().unwrap();
        assert_eq!(u, v);
        for bad in [
            "",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa0f",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fg0",
            "4dea22b31-d52-d8f3-2516-782e98ab3fa0",
        ] {
            assert!(
                bad.parse::<Uuid>()
                    .unwrap_err()
                    .contains("expected 32 hex digits"),
                "{bad}"
            );
        }
        assert!("00000000-0000-0000-0000-000000000000"
            .parse::<Uuid>()
            .unwrap_err()
            .contains("all digits are the same"));
    }

    #[test]
    fn generated_uuids_are_version_4() {
        let a = Uuid::new_v4().unwrap();
        let b = Uuid::new_v4().unwrap();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(s.parse::<Uuid>(), Ok(a));
    }

    #[test]
    fn macs() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:100".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("multicast"));
        let g = MacAddr::generate().unwrap();
        assert_eq!(&g.0[..3], &[0x52, 0x54, 0x00]);
    }
}
