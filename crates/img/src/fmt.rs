//! qemu-img style number formatting and parsing.

/// Parses a size with an optional suffix (B, K, M, G, T, P, E; binary units,
/// fractions allowed), like qemu-img.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let err = || {
        format!(
            "Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes. (got '{s}')"
        )
    };
    if s.is_empty() {
        return Err(err());
    }
    let (num, suffix) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let mult: u64 = match suffix {
        "" | "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return Err(err()),
    };
    if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| err())?;
        let r = v * mult as f64;
        if !(0.0..1.8e19).contains(&r) {
            return Err(err());
        }
        Ok(r as u64)
    } else {
        let v: u64 = num.parse().map_err(|_| err())?;
        v.checked_mul(mult).ok_or_else(err)
    }
}

/// qemu's size_to_str: "%0.3g" in the largest binary unit keeping the value
/// below 1000.
pub fn size_to_str(v: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    let mut d = v as f64;
    while d >= 1000.0 && i < UNITS.len() - 1 {
        d /= 1024.0;
        i += 1;
    }
    format!("{} {}", g3(d), UNITS[i])
}

/// printf("%0.3g") for 0 <= v < 1000.
fn g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.log10().floor() as i32).clamp(0, 20) as usize;
    let s = format!("{v:.digits$}");
    // %g may round up into the next decade (e.g. 99.96 -> "100").
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "1000" {
        return "1e+03".into();
    }
    s
}

/// Formats seconds since the epoch as local "YYYY-MM-DD HH:MM:SS".
pub fn local_date(secs: i64) -> String {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes
    // into the struct we pass and reads `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live, properly aligned locals.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return String::from("1970-01-01 00:00:00");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    #[test]
    fn size_strings_match_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(1 << 30), "1 GiB");
        assert_eq!(size_to_str(200704), "196 KiB");
        assert_eq!(size_to_str(339968), "332 KiB");
        assert_eq!(size_to_str(3 << 29), "1.5 GiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
    }
}
