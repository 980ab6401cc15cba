//! UUIDs as libvirt writes and accepts them.

use crate::{Error, Result};

/// A 128-bit UUID; displayed in the canonical 8-4-4-4-12 lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random (version 4) UUID from the kernel's random source.
    pub fn new_v4() -> Uuid {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of
            // the live local buffer `b`.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            if n > 0 {
                got += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // No kernel randomness (never on Linux >= 3.17): fall back
                // to time and pid, still unique enough for names.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                b = (t ^ ((std::process::id() as u128) << 64)).to_le_bytes();
                break;
            }
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    /// Parses 32 hex digits, optionally separated by dashes between byte
    /// pairs and surrounded by blanks (libvirt's `virUUIDParse`).
    pub fn parse(s: &str) -> Result<Uuid> {
        let err = || {
            Error::invalid(format!("malformed uuid '{s}' (expected 32 hex digits like 0c5d2ef4-4d9e-4c47-9f9b-7ee3b5e0a1b2)"))
        };
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut chars = s.trim().chars().peekable();
        while let Some(c) = chars.next() {
            if c == '-' {
                continue;
            }
            let hi = c.to_digit(16).ok_or_else(err)?;
            let lo = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(err)?;
            if n == 16 {
                return Err(err());
            }
            out[n] = (hi * 16 + lo) as u8;
            n += 1;
        }
        if n != 16 {
            return Err(err());
        }
        Ok(Uuid(out))
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let u = Uuid::parse("0C5D2EF4-4d9e-4c47-9f9b-7ee3b5e0a1b2").unwrap();
        assert_eq!(u.to_string(), "0c5d2ef4-4d9e-4c47-9f9b-7ee3b5e0a1b2");
        assert_eq!(
            Uuid::parse(" 0c5d2ef44d9e4c479f9b7ee3b5e0a1b2 ").unwrap(),
            u
        );
        for bad in [
            "",
            "xyz",
            "0c5d2ef4-4d9e-4c47-9f9b-7ee3b5e0a1",
            "0c5d2ef44d9e4c479f9b7ee3b5e0a1b2ff",
            "0c5d2ef4-4d9e-4c47-9f9b-7ee3b5e0a1bg",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad}");
        }
        let a = Uuid::new_v4();
        assert_ne!(a, Uuid::new_v4());
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(Uuid::parse(&a.to_string()).unwrap(), a);
    }
}
