//! libvirt's scaled integers (`unit='GiB'`, virsh `10G`) and virsh's
//! human-readable capacities (`19.52 GiB`).

use crate::{Error, Result};

/// Multiplier of a libvirt unit name, case-insensitive as libvirt's
/// `virScaleInteger`: `b`/`byte`/`bytes` = 1; `k`, `KiB` = 1024; `KB` =
/// 1000; likewise M, G, T, P, E. An empty unit means `default`.
pub fn unit_multiplier(unit: &str, default: u64) -> Option<u64> {
    let u = unit.trim();
    if u.is_empty() {
        return Some(default);
    }
    let lower = u.to_ascii_lowercase();
    if matches!(lower.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let (first, rest) = lower.split_at(1);
    let base: u64 = match rest {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    let power = match first {
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        "e" => 6,
        _ => return None,
    };
    base.checked_pow(power)
}

/// Parses `value` in `unit` (XML attribute form), naming `what` in errors.
pub fn scale(what: &str, value: &str, unit: &str) -> Result<u64> {
    let v = value.trim();
    let n: u64 = v
        .parse()
        .map_err(|_| Error::invalid(format!("{what}: '{value}' is not a non-negative integer")))?;
    let mult = unit_multiplier(unit, 1)
        .ok_or_else(|| Error::invalid(format!("{what}: unknown unit '{unit}'")))?;
    n.checked_mul(mult)
        .ok_or_else(|| Error::invalid(format!("{what}: {value} {unit} does not fit in 64 bits")))
}

/// Parses a virsh scaled integer such as `10G`, `512MiB`, `1000000 KB` or
/// `4096` (bytes), like virsh's capacity arguments.
pub fn parse_scaled(what: &str, s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(Error::invalid(format!(
            "{what}: '{s}' is not a size (use a number with an optional unit such as 10G or 512MiB)"
        )));
    }
    scale(what, num, unit)
}

/// virsh's `vshPrettyCapacity`: the value in the largest binary unit that
/// keeps it below 1024, two decimals (`19.52 GiB`, `0.00 B`).
pub fn pretty_capacity(v: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    let mut d = v as f64;
    while d >= 1024.0 && i < UNITS.len() - 1 {
        d /= 1024.0;
        i += 1;
    }
    format!("{d:.2} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_match_libvirt() {
        assert_eq!(scale("c", "1", "").unwrap(), 1);
        assert_eq!(scale("c", "5", "bytes").unwrap(), 5);
        assert_eq!(scale("c", "2", "KiB").unwrap(), 2048);
        assert_eq!(scale("c", "2", "k").unwrap(), 2048);
        assert_eq!(scale("c", "2", "KB").unwrap(), 2000);
        assert_eq!(scale("c", "3", "G").unwrap(), 3 << 30);
        assert_eq!(scale("c", "3", "gb").unwrap(), 3_000_000_000);
        assert_eq!(scale("c", "1", "EiB").unwrap(), 1 << 60);
        assert!(scale("c", "16", "EiB").is_err(), "overflow");
        let e = scale("capacity", "3", "furlongs").unwrap_err().to_string();
        assert!(e.contains("unknown unit 'furlongs'"), "{e}");
        assert!(scale("c", "-1", "").is_err());
        assert!(scale("c", "1.5", "G").is_err());
        assert!(scale("c", "", "").is_err());
    }

    #[test]
    fn virsh_scaled_arguments() {
        assert_eq!(parse_scaled("capacity", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_scaled("capacity", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_scaled("capacity", "4096").unwrap(), 4096);
        assert_eq!(parse_scaled("capacity", "1000 KB").unwrap(), 1_000_000);
        assert!(parse_scaled("capacity", "G").is_err());
        assert!(parse_scaled("capacity", "-1G").is_err());
        assert!(parse_scaled("capacity", "1Q").is_err());
    }

    #[test]
    fn pretty_capacities_match_virsh() {
        assert_eq!(pretty_capacity(0), "0.00 B");
        assert_eq!(pretty_capacity(1023), "1023.00 B");
        assert_eq!(pretty_capacity(1024), "1.00 KiB");
        assert_eq!(pretty_capacity(200704), "196.00 KiB");
        assert_eq!(pretty_capacity(10 << 30), "10.00 GiB");
        assert_eq!(pretty_capacity(20_960_000_000), "19.52 GiB");
    }
}
