//! libvirt's scaled integers: `<memory unit='GiB'>2</memory>`, `virsh setmem 512M`.
//!
//! Units, as libvirt reads them (case-insensitive): `b`, `byte`, `bytes`; a power letter
//! `k m g t p e` alone or followed by `iB` is a power of 1024 (`KiB`, `M`); followed by `B`
//! it is a power of 1000 (`KB`, `MB`). Memory is kept in KiB, rounded up, as libvirt does.

/// Bytes per unit for a libvirt unit name, or `None` when the unit is unknown.
pub fn unit_scale(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_lowercase();
    if matches!(u.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = u.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

/// The units libvirt accepts, for messages.
pub const UNITS_HELP: &str =
    "b, KB, KiB (k), MB, MiB (M), GB, GiB (G), TB, TiB (T), PB, PiB (P), EB, EiB (E)";

/// A memory value with an optional unit (default KiB) → KiB, rounded up. The message says
/// what is wrong; callers prefix it with the element's path.
pub fn parse_memory_kib(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let scale = match unit {
        None => 1024,
        Some(u) => unit_scale(u).ok_or_else(|| format!("unknown unit '{u}' (use {UNITS_HELP})"))?,
    };
    let n = parse_u64(value)?;
    let bytes = n.checked_mul(scale).ok_or_else(|| {
        format!(
            "{} {} does not fit in 64 bits of bytes",
            value.trim(),
            unit.unwrap_or("KiB")
        )
    })?;
    Ok(bytes.div_ceil(1024))
}

/// A size as virsh takes it on the command line (`512M`, `2GiB`, `1048576`), with
/// `default_unit` for a bare number → bytes.
pub fn parse_size(s: &str, default_unit: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size '{s}': expected a number such as 512M or 2G"
        ));
    }
    let unit = if suffix.is_empty() {
        default_unit
    } else {
        suffix
    };
    let scale = unit_scale(unit)
        .ok_or_else(|| format!("invalid size '{s}': unknown unit '{unit}' (use {UNITS_HELP})"))?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

/// A non-negative decimal integer, as libvirt reads scaled values.
pub fn parse_u64(value: &str) -> Result<u64, String> {
    let v = value.trim();
    if v.starts_with('-') {
        return Err(format!("'{v}' is negative"));
    }
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("'{v}' is not a non-negative integer"));
    }
    v.parse().map_err(|_| format!("'{v}' is too large"))
}

/// KiB as the largest whole binary unit ("2 GiB", "1536 MiB", "100 KiB").
pub fn format_kib(kib: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = kib;
    let mut i = 0;
    while v != 0 && v % 1024 == 0 && i < UNITS.len() - 1 {
        v /= 1024;
        i += 1;
    }
    format!("{v} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libvirt_unit() {
        let cases: &[(&str, u64)] = &[
            ("b", 1),
            ("bytes", 1),
            ("KB", 1000),
            ("k", 1024),
            ("KiB", 1024),
            ("MB", 1000 * 1000),
            ("M", 1 << 20),
            ("MiB", 1 << 20),
            ("GB", 1_000_000_000),
            ("G", 1 << 30),
            ("GiB", 1 << 30),
            ("TB", 1_000_000_000_000),
            ("T", 1 << 40),
            ("TiB", 1 << 40),
            ("PB", 1_000_000_000_000_000),
            ("P", 1 << 50),
            ("PiB", 1 << 50),
            ("EB", 1_000_000_000_000_000_000),
            ("E", 1 << 60),
            ("EiB", 1 << 60),
        ];
        for (u, scale) in cases {
            assert_eq!(unit_scale(u), Some(*scale), "{u}");
        }
        assert_eq!(unit_scale("kib"), Some(1024));
        assert_eq!(unit_scale("Q"), None);
        assert_eq!(unit_scale("KiBB"), None);
        assert_eq!(unit_scale(""), None);
    }

    #[test]
    fn memory_rounds_up_to_kib() {
        assert_eq!(parse_memory_kib("1048576", None), Ok(1048576));
        assert_eq!(parse_memory_kib("2", Some("GiB")), Ok(2 << 20));
        assert_eq!(parse_memory_kib("1000", Some("b")), Ok(1));
        assert_eq!(parse_memory_kib("1", Some("MB")), Ok(977)); // 1e6 / 1024 rounded up
        assert_eq!(
            parse_memory_kib("-1", None).unwrap_err(),
            "'-1' is negative"
        );
        assert_eq!(
            parse_memory_kib("16", Some("EiB")).unwrap_err(),
            "16 EiB does not fit in 64 bits of bytes"
        );
        assert_eq!(
            parse_memory_kib("99999999999999999999", None).unwrap_err(),
            "'99999999999999999999' is too large"
        );
        assert!(parse_memory_kib("1", Some("GiBs"))
            .unwrap_err()
            .starts_with("unknown unit 'GiBs'"));
        assert_eq!(
            parse_memory_kib("1.5", None).unwrap_err(),
            "'1.5' is not a non-negative integer"
        );
    }

    #[test]
    fn virsh_sizes() {
        assert_eq!(parse_size("512M", "KiB"), Ok(512 << 20));
        assert_eq!(parse_size("1024", "KiB"), Ok(1 << 20));
        assert_eq!(parse_size("2", "GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1GB", "KiB"), Ok(1_000_000_000));
        assert!(parse_size("x", "KiB")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_size("1X", "KiB")
            .unwrap_err()
            .contains("unknown unit 'X'"));
        assert!(parse_size("20E", "KiB").unwrap_err().contains("too large"));
        assert_eq!(format_kib(2 << 20), "2 GiB");
        assert_eq!(format_kib(1536 << 10), "1536 MiB");
        assert_eq!(format_kib(100), "100 KiB");
        assert_eq!(format_kib(0), "0 KiB");
    }
}
